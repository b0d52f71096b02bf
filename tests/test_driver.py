"""Driver decisions that need no Ray: when a search counts as interrupted."""

from __future__ import annotations

import pytest

from search.errors import SearchInterrupted
from search.run.driver import check_not_interrupted
from search.spec.schema import parse_spec


def test_search_short_of_its_budget_counts_as_interrupted(spec_dict, tmp_path):
    spec = parse_spec(spec_dict, tmp_path)
    check_not_interrupted(spec.budget, spec.name, finished=4, elapsed_s=10.0, parent="p")  # the whole budget ran
    with pytest.raises(SearchInterrupted, match="interrupted after 2 of 4 trials"):
        check_not_interrupted(spec.budget, spec.name, finished=2, elapsed_s=10.0, parent="p")
    spec_dict["budget"]["time_limit_s"] = 10
    timed = parse_spec(spec_dict, tmp_path)
    check_not_interrupted(timed.budget, timed.name, finished=2, elapsed_s=10.0, parent="p")  # the time limit ended it
