from .viewers import (SimcryoClassesViewer, SimcryoDenoiseViewer, SimcryoEvaluateViewer,
                      SimcryoSelectViewer, SimcryoSimulateViewer, MetricsTableView)

__all__ = ['SimcryoClassesViewer', 'SimcryoDenoiseViewer', 'SimcryoEvaluateViewer',
           'SimcryoSelectViewer', 'SimcryoSimulateViewer', 'MetricsTableView']
