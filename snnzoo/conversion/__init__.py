"""ANN-to-SNN conversion (SPEC section 12): ``convert(ann, calibration_data, T, method)`` turns an ANN of conv /
linear / BatchNorm / ReLU or QCFS / average pooling / residual additions into a stateless multi-step network of IF
neurons. Methods: threshold balancing (``'max'``, ``'percentile'``; layer- or channel-wise), ``'qcfs'`` (Bu et al.,
ICLR 2022) and ``'exact'`` (spike counts equal the QCFS ANN's activation levels at T = L)."""
from .calibration import activation_scales, calibration_batches
from .convert import METHODS, ConvertedSNN, convert
from .neurons import BurstIF, ConvertedNeuron, RepeatSteps, SignedIF, SpikeScale, ThresholdIF

__all__ = ['convert', 'ConvertedSNN', 'METHODS', 'ConvertedNeuron', 'ThresholdIF', 'SignedIF', 'BurstIF', 'SpikeScale',
           'RepeatSteps', 'activation_scales', 'calibration_batches']
