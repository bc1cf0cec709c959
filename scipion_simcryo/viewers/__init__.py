from .viewers import (SimcryoClassesViewer, SimcryoDenoiseViewer, SimcryoEvaluateViewer,
                      SimcryoSimulateViewer, MetricsTableView)

__all__ = ['SimcryoClassesViewer', 'SimcryoDenoiseViewer', 'SimcryoEvaluateViewer',
           'SimcryoSimulateViewer', 'MetricsTableView']
