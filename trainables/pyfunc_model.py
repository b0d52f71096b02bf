"""The champion as an MLflow pyfunc model, logged as *code* (MLflow's models-from-code).

MLflow runs this file when the model is loaded, so no pickled object is stored or
read: the composite comes back from its JSON description, safetensors weights and
member assets (the ``composite`` artifact), an ensemble from its JSON and one such
folder per composite (the ``ensemble`` artifact). Input: one entry per input the members
read, as a dict or a pandas DataFrame: numeric inputs as float arrays (e.g.
``{"image": (N, 1, 8, 8)}``), texts as strings, images as encoded bytes (PNG, JPEG),
file paths or uint8 arrays, a table's numeric and categorical columns each by its own name
(missing values and unseen categories allowed). Output: the class probabilities, shape (N, classes)
(a regression: the predicted values, (N, 1)), or with
``params={"output": "classes"}`` each row's class name, at the champion's decision threshold when
it has one (two classes; the model's ``decision_threshold`` configuration). Only MLflow should
import this module.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch

from trainables.composite import CompositeModel
from trainables.data import InputDescription
from trainables.ensemble_model import WeightedEnsemble, composites, load_predictor
from trainables.metrics import OUTPUTS, THRESHOLD_KEY, predicted_classes
from trainables.preprocess import AudioRef, Column, ImageRef, Table, decode_image
from trainables.sources import RowProblem, category, number


def table_input(model_input: Any, description: InputDescription) -> Table:
    """The numeric and categorical columns a table input was fitted on, from the model input: a
    missing number or category (None, NaN) is allowed, text in a numeric column is not."""
    numeric, categorical = tuple(description.table["numeric"]), tuple(description.table["categorical"])
    try:
        numbers = [[number(v, c) for v in model_input[c]] for c in numeric]
        categories = [[category(v, c) for v in model_input[c]] for c in categorical]
    except RowProblem as problem:
        raise ValueError(str(problem)) from None
    return Table.of(numeric, categorical, numbers, categories)


def raw_inputs(model_input: Any, inputs: dict[str, InputDescription]) -> dict[str, Column]:
    """The raw columns the composite prepares, from a dict or a DataFrame of inputs."""
    wanted = sorted({c for name, d in inputs.items() for c in d.columns(name)})
    missing = [c for c in wanted if c not in model_input]
    if missing:
        raise ValueError(f"model input lacks {', '.join(missing)} (expects: {', '.join(wanted)})")
    columns: dict[str, Column] = {}
    for name, description in inputs.items():
        kind = description.kind
        if kind == "table":
            columns[name] = table_input(model_input, description)
            continue
        values = model_input[name]
        values = values.tolist() if hasattr(values, "tolist") and kind != "tensor" else values
        if kind == "tensor":
            array = np.stack(list(values)) if getattr(values, "dtype", None) == object else np.asarray(values)
            columns[name] = torch.as_tensor(array.astype(np.float32))
        elif kind == "image":  # encoded images and paths are decoded a batch at a time
            columns[name] = [ImageRef.read(v) if isinstance(v, (bytes, str)) else decode_image(v) for v in values]
        elif kind == "audio":  # so are recordings (paths or encoded bytes)
            columns[name] = [AudioRef.read(v) for v in values]
        else:
            columns[name] = [str(v) for v in values]
    return columns


class CompositePyfunc(mlflow.pyfunc.PythonModel):
    # The logged signature is the schema: MLflow need not derive one from type hints.
    _skip_type_hint_validation = True
    model: CompositeModel | WeightedEnsemble

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = context.artifacts
        self.model = load_predictor(artifacts["composite"] if "composite" in artifacts else artifacts["ensemble"])
        self.class_names = np.array(composites(self.model)[0].description.class_names, dtype=object)
        self.threshold = (context.model_config or {}).get(THRESHOLD_KEY)

    # ``model_input`` is a dict or DataFrame of inputs; left unannotated because MLflow
    # would try to derive a schema from the hint, and the logged signature is the schema.
    def predict(self, context: object, model_input, params: dict | None = None) -> np.ndarray:  # noqa: ANN001
        output = (params or {}).get("output", OUTPUTS[0])
        if output not in OUTPUTS:
            raise ValueError(f"params.output: {output!r} is not one of {', '.join(OUTPUTS)}")
        if output != OUTPUTS[0] and not len(self.class_names):
            raise ValueError(f"params.output: {output!r} is for classifiers; this model predicts a value (a regression)")
        proba = self.model.predict_raw(raw_inputs(model_input, self.model.served_inputs)).numpy()
        return proba if output == OUTPUTS[0] else self.class_names[predicted_classes(proba, self.threshold)]


mlflow.models.set_model(CompositePyfunc())
