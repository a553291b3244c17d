using System.Globalization;
using Microsoft.ML.BootMae.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// The NaN/Inf guard of fine-tuning without a GPU sync per step: a non-finite loss makes the epoch's running sum
/// non-finite for good, and the sum is read anyway at every report, checkpoint and epoch end; only then, and only when
/// it is not finite, is each batch's loss (kept here, on the device) read to name the first bad step.
/// </summary>
internal sealed class FineTuneBatchLosses : IDisposable
{
    private readonly Tensor _losses;
    private readonly long[] _steps;
    private readonly double[] _learningRates;
    private readonly int _batchSize;

    public FineTuneBatchLosses(long stepsPerEpoch, int batchSize, Device device)
    {
        _losses = zeros(stepsPerEpoch, dtype: ScalarType.Float64, device: device);
        (_steps, _learningRates, _batchSize) = (new long[stepsPerEpoch], new double[stepsPerEpoch], batchSize);
    }

    /// <summary>Forgets the previous epoch's losses.</summary>
    public void Clear() => OwnedTensors.Zero(_losses);

    /// <summary>Keeps the loss (a 1-element float64 tensor) of the epoch's batch <paramref name="index"/>, trained as <paramref name="step"/>.</summary>
    public void Record(long index, Tensor loss, long step, double learningRate)
    {
        if (index < _steps.Length)
        {
            _losses.narrow(0, index, 1).copy_(loss.reshape(1));
            (_steps[index], _learningRates[index]) = (step, learningRate);
        }
    }

    /// <summary>Throws <see cref="BootMaeTrainingException"/> naming the first bad batch when <paramref name="lossSum"/> is not finite.</summary>
    public void ThrowIfNotFinite(double lossSum, int epoch)
    {
        if (double.IsFinite(lossSum))
        {
            return;
        }

        // The rare path: one read of this epoch's per-batch losses finds the first bad batch. TrainingLoop adds where the
        // last good checkpoint is.
        var losses = _losses.cpu().data<double>().ToArray();
        int batch = Array.FindIndex(losses, l => !double.IsFinite(l));
        string where = batch < 0
            ? $"in epoch {epoch}"
            : string.Format(CultureInfo.InvariantCulture,
                "{0} at step {1} (epoch {2}, batch {3} of the epoch: images {4}..{5} in its reading order, learning rate {6:E2})",
                losses[batch], _steps[batch], epoch, batch, (long)batch * _batchSize, ((long)(batch + 1) * _batchSize) - 1, _learningRates[batch]);
        throw new BootMaeTrainingException($"The fine-tuning loss became {where}. Lower LearningRate or check the input images (a NaN or infinite pixel gives this).");
    }

    public void Dispose() => _losses.Dispose();
}
