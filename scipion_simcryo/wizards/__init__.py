from .wizards import (SimcryoMaskDiameterWizard, SimcryoNumberOfClassesWizard,
                      defaultMaskDiameter, suggestedNumberOfClasses)

__all__ = ['SimcryoMaskDiameterWizard', 'SimcryoNumberOfClassesWizard', 'defaultMaskDiameter',
           'suggestedNumberOfClasses']
