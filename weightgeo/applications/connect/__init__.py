"""Mode connectivity: join two trained networks by a path of high accuracy, and compare methods."""

from weightgeo.applications.connect.curves import Bezier, Curve, Polyline
from weightgeo.applications.connect.evaluate import PointEvaluator, summarise
from weightgeo.applications.connect.methods import (
    METHODS,
    TRAINED,
    MethodResult,
    Setting,
    run_method,
)
from weightgeo.applications.connect.rebasin import mlp_layers, permute_mlp, weight_matching
from weightgeo.applications.connect.run import RESULT_COLUMNS, connect, connect_networks

__all__ = [
    "METHODS", "RESULT_COLUMNS", "TRAINED", "Bezier", "Curve", "MethodResult", "PointEvaluator",
    "Polyline", "Setting", "connect", "connect_networks", "mlp_layers", "permute_mlp",
    "run_method", "summarise", "weight_matching",
]
