"""Mode connectivity: join two trained networks by a path of high accuracy, and compare methods.

:class:`Connect` is the application (``weightgeo connect A B --out DIR``), with its settings
:class:`ConnectSettings` and its methods :data:`METHODS`; :func:`connect` and
:func:`connect_networks` run it from Python.
"""

from weightgeo.applications.connect.curves import BENT_CURVES, Bezier, Curve, CurveLoss, Polyline
from weightgeo.applications.connect.evaluate import PointEvaluator, path_metric_length, summarise
from weightgeo.applications.connect.methods import DEFAULT_METHODS, METHODS, Method, run_method
from weightgeo.applications.connect.rebasin import mlp_layers, permute_mlp, weight_matching
from weightgeo.applications.connect.report import RESULT_COLUMNS
from weightgeo.applications.connect.run import Connect, Connection, connect, connect_networks
from weightgeo.applications.connect.settings import ConnectSettings
from weightgeo.applications.connect.task import ConnectTask, MethodResult

__all__ = [
    "BENT_CURVES", "DEFAULT_METHODS", "METHODS", "RESULT_COLUMNS", "Bezier", "Connect", "ConnectSettings",
    "ConnectTask", "Connection", "Curve", "CurveLoss", "Method", "MethodResult", "PointEvaluator", "Polyline",
    "connect", "connect_networks", "mlp_layers", "path_metric_length", "permute_mlp", "run_method",
    "summarise", "weight_matching",
]
