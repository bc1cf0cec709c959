from .protocol_base import ProtSimcryoBase
from .protocol_simulate import ProtSimcryoSimulate
from .protocol_evaluate import ProtSimcryoEvaluate
from .protocol_denoise import ProtSimcryoDenoise
from .protocol_classify2d import ProtSimcryoClassify2D
from .protocol_align_average import ProtSimcryoAlignAverage
from .protocol_select import ProtSimcryoSelectClasses

__all__ = ['ProtSimcryoBase', 'ProtSimcryoSimulate', 'ProtSimcryoEvaluate', 'ProtSimcryoDenoise',
           'ProtSimcryoClassify2D', 'ProtSimcryoAlignAverage', 'ProtSimcryoSelectClasses']
