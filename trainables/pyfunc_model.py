"""The champion as an MLflow pyfunc model, logged as *code* (MLflow's models-from-code).

MLflow runs this file when the model is loaded, so no pickled object is stored or
read: the composite comes back from its JSON description and safetensors weights
(the ``composite`` artifact). Input: a dict of named float arrays, one per input
the members read (e.g. ``{"image": (N, 1, 8, 8), "flat": (N, 64)}``); output: the
class probabilities, shape (N, classes). Only MLflow should import this module.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from trainables.composite import CompositeModel, load_composite


class CompositePyfunc(mlflow.pyfunc.PythonModel):
    # The logged signature is the schema: MLflow need not derive one from type hints.
    _skip_type_hint_validation = True
    model: CompositeModel

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = load_composite(context.artifacts["composite"])

    # ``model_input`` is a dict of named float arrays; left unannotated because MLflow
    # would try to derive a schema from the hint, and the logged signature is the schema.
    def predict(self, context: object, model_input, params: dict | None = None) -> np.ndarray:  # noqa: ANN001
        needed = {m.input for m in self.model.description.members}
        missing = sorted(needed - set(model_input))
        if missing:
            raise ValueError(f"model input lacks {', '.join(missing)} (expects: {', '.join(sorted(needed))})")
        inputs = {k: torch.as_tensor(np.asarray(model_input[k], dtype=np.float32)) for k in needed}
        return self.model.predict_proba(inputs).numpy()


mlflow.models.set_model(CompositePyfunc())
