from .viewers import (SimcryoClassesViewer, SimcryoEvaluateViewer, SimcryoParticlesViewer,
                      MetricsTableView)
