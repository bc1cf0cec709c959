from .wizards import (SimcryoMaskDiameterWizard, SimcryoNumberOfClassesWizard,
                      engineMaskDiameter, numberOfClassesMessage, suggestedNumberOfClasses)

__all__ = ['SimcryoMaskDiameterWizard', 'SimcryoNumberOfClassesWizard', 'engineMaskDiameter',
           'numberOfClassesMessage', 'suggestedNumberOfClasses']
