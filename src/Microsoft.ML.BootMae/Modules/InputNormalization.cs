using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// The one place where [0, 1] pixels become network input (and back, for pictures): featurize, fine-tune, pretraining
// and the reconstruction preview all call it with their architecture's normalisation; the ONNX graph repeats it.
internal static class InputNormalization
{
    // Scalars of the normalisations in use, made once (a handful of distinct values per process), never disposed,
    // like TorchScalars: no per-batch number → Scalar conversion. A racing GetOrAdd may make a duplicate that is never
    // handed to libtorch, so its finalizer is harmless.
    private static readonly ConcurrentDictionary<double, Scalar> Scalars = new();

    // The first count images of planar [0, 1] floats (count·C·H·W values in a's layout) as a count×C×H×W tensor on
    // device, not normalised (pretraining augments it first).
    public static Tensor Pixels(float[] pixels01, int count, BootMaeArchitecture a, Device device)
    {
        long perImage = (long)a.Channels * a.ImageSize * a.ImageSize;
        if (count < 0 || pixels01.LongLength < count * perImage)
        {
            throw new ArgumentException($"{count} images of {a.Channels}×{a.ImageSize}×{a.ImageSize} need {count * perImage} floats, but {pixels01.LongLength} were given.", nameof(pixels01));
        }

        return tensor(pixels01.AsSpan(0, checked((int)(count * perImage))).ToArray(), new long[] { count, a.Channels, a.ImageSize, a.ImageSize }).to(device);
    }

    // The network input: Pixels normalised as a's weights expect.
    public static Tensor Input(float[] pixels01, int count, BootMaeArchitecture a, Device device)
        => Apply(Pixels(pixels01, count, a, device), a.Normalization);

    // B×C×H×W pixels in [0, 1] → (x − mean[c]) / std[c], as a new tensor.
    public static Tensor Apply(Tensor pixels01, BootMaeNormalization n)
    {
        if (n.IsBootMae)
        {
            // x·2 − 1, the historical form: bit-identical with files and fixtures written before per-channel statistics.
            return pixels01.mul(TorchScalars.TwoDouble).sub_(TorchScalars.OneDouble);
        }

        if (n.IsUniform)
        {
            return pixels01.sub(Of(n.MeanOf(0))).div_(Of(n.StdOf(0)));
        }

        var result = pixels01.clone();
        for (int c = 0; c < result.shape[1]; c++)
        {
            using var plane = result.select(1, c);
            plane.sub_(Of(n.MeanOf(c))).div_(Of(n.StdOf(c)));
        }

        return result;
    }

    // The inverse, for pictures: normalised B×C×H×W → x·std[c] + mean[c], as a new tensor (not clamped).
    public static Tensor Invert(Tensor normalized, BootMaeNormalization n)
    {
        if (n.IsBootMae)
        {
            return normalized.add(TorchScalars.OneDouble, TorchScalars.One).div_(TorchScalars.TwoDouble);
        }

        if (n.IsUniform)
        {
            return normalized.mul(Of(n.StdOf(0))).add_(Of(n.MeanOf(0)), TorchScalars.One);
        }

        var result = normalized.clone();
        for (int c = 0; c < result.shape[1]; c++)
        {
            using var plane = result.select(1, c);
            plane.mul_(Of(n.StdOf(c))).add_(Of(n.MeanOf(c)), TorchScalars.One);
        }

        return result;
    }

    private static Scalar Of(double value) => Scalars.GetOrAdd(value, v => v.ToScalar());
}
