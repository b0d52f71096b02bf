"""The names of a search's record: MLflow tags, parameters and artifact paths, and the Optuna
study's attributes. The writer (``search.run.record``) and the readers (``search.look``) share
them, so a name changes in one place. Nothing here imports anything.
"""

# Runs: what a run is, which search it belongs to, how it ended.
ROLE = "fusion_search.role"  # "search" on the parent run, "trial" on a trial's
PARENT_TAG = "mlflow.parentRunId"  # nests a trial run under its search in MLflow's UI
STATE_TAG = "fusion_search.state"  # a trial's end: completed, stopped early, failed
TRIAL_ID_TAG = "fusion_search.trial_id"
NODE_IDS_TAG = "fusion_search.node_ids"
NODE_IP_TAG = "fusion_search.node_ip"
ERROR_TAG = "fusion_search.error"

# The parent run: what resume and the read-only commands need to find again.
OBJECTIVES_TAG = "fusion_search.objectives"  # the search's Objectives as JSON
STUDY_TAG = "fusion_search.study_storage"  # the Optuna study's storage URL (a password in it hidden)
TUNE_EXPERIMENT_TAG = "fusion_search.tune_experiment"
STORAGE_TAG = "fusion_search.storage"  # the run's local storage folder (Optuna, cache), for resume
SPEC_DIR_TAG = "fusion_search.spec_dir"  # the spec file's folder: its relative paths' base, for resume
CHAMPION_KIND_TAG = "fusion_search.champion_kind"  # the kind of candidate the champion is (its maker's name)
CHAMPION_TRIAL_TAG = "fusion_search.champion_trial"  # the trial it is, or whose structure it has
CHAMPION_URI_TAG = "fusion_search.champion_uri"
TEST_DISAGREES_TAG = "fusion_search.test_disagrees"  # the line saying a row the champion beat on validation beat it on test
THRESHOLD = "decision_threshold"  # the champion model's metadata key and registered version tag
THRESHOLD_METRIC = "champion.decision_threshold"  # two classes: the positive class's probability above which the champion predicts it
RUNGS_PARAM = "scheduler.rungs"  # the epochs at which ASHA compares trials, comma-separated

# What kind of experiment this is, in MLflow's words (model training, not GenAI). MLflow 3.17's UI
# takes the kind from its own switch instead; the links printed say it (``search.locations.ui_link``).
KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"

# Artifacts of the parent run.
SPEC_FILE = "spec.yaml"  # the spec, as the parent run logged it
SKIPPED_ROWS = "skipped_rows.txt"
CLASS_BALANCE = "class_balance.json"
FEATURE_CACHE = "feature_cache.json"
CONFUSION = "confusion_matrix.json"
PREDICTED = "predicted_vs_true.json"  # a regression champion's test predictions beside the targets (up to 2,000 rows)
CLASS_REPORT = "class_report.json"  # the champion's precision, recall, F1 and support of each class, on test
ENSEMBLE_FILE = "ensemble.json"
WEIGHT_FUSION_FILE = "weight_fusion.json"  # candidates made after the search: what each was made of
TEST_TABLE = "test_table.json"
DOMAIN_PROJECTION = "domain_projection.json"  # data with domains: fused features of both, in 2-D, before and after adaptation


ON = " on "  # in a test table row's label, before the domain its test rows are of (MLflow's metric names allow no brackets)


def domain_row(label: str, domain: str) -> str:
    """The test table's row of ``label``'s model on one domain's test rows (``source``, ``target``)."""
    return f"{label}{ON}{domain}"


def row_model(label: str) -> str:
    """The model a test table row is of: ``champion`` for ``champion on target``."""
    return label.split(ON, 1)[0]
CANDIDATES_FILE = "candidates.json"  # every candidate for champion: label, kind, point, front, the pick
COVERAGE_FILE = "coverage.json"  # the structures (member subsets x operators, members alone) and which were tried
PLOTS_DIR = "plots"
PARETO_DIR = "pareto"

# Registered model aliases.
CHAMPION_ALIAS = "champion"

# The Optuna study beside an embedded store, and the attributes a search writes on it.
STUDY_FILE = "optuna.db"
RUN_ATTR = "fusion_search.run"  # on a trial: the MLflow parent run of the search that asked for it
ALONE_ATTR = "fusion_search.alone"  # on an enqueued trial: the member it trains alone
TUNE_TRIAL_ATTR = "fusion_search.tune_trial"  # on a trial: Tune's trial id (its folder is trial_<id>)
ALONE_AGAIN_ATTR = "fusion_search.alone_again"  # on the study, per search run: members alone were queued again
SLACK_ATTR = "fusion_search.constraint_slack"
SEARCHES_ATTR = "fusion_search.searches"
OBJECTIVES_ATTR = "fusion_search.objectives"
