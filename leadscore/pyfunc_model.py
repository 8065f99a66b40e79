"""A leadscore model as MLflow's generic ``pyfunc`` flavour, logged from code.

MLflow runs this file when it loads the model (its "models from code"), so no pickled Python
object is stored with the model and nothing is unpickled at load: the artifact is the model's
own files (:class:`~leadscore.artifact.LeadModel`) plus this code. leadscore itself loads
models through :mod:`leadscore.registry`; this flavour is for tools that only know pyfunc
(``mlflow.pyfunc.load_model``, ``mlflow models serve``). Nothing else imports this module.
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from leadscore.artifact import LeadModel, find_artifact_dir


class LeadModelPyfunc(PythonModel):
    """Calibrated probability from a feature frame; categories as strings."""

    def load_context(self, context) -> None:
        self.model = LeadModel.load(find_artifact_dir(Path(context.artifacts["leadmodel"])))

    def predict(self, context, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        p = self.model.predict_proba(pd.DataFrame(model_input))
        return pd.DataFrame({"probability": p})


mlflow.models.set_model(LeadModelPyfunc())
