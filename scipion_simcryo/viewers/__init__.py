from .viewers import (SimcryoClassesViewer, SimcryoEvaluateViewer, SimcryoParticlesViewer,
                      MetricsTableView)

__all__ = ['SimcryoClassesViewer', 'SimcryoEvaluateViewer', 'SimcryoParticlesViewer',
           'MetricsTableView']
