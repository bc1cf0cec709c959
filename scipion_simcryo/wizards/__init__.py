from .wizards import (SimcryoMaskRadiusWizard, SimcryoNumberOfClassesWizard,
                      defaultMaskRadius, suggestedNumberOfClasses)
