using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Draws what the pixel regressor makes of masked images: original | masked input | reconstruction, as in the MAE
/// paper's figures. Predictions of a normalised-pixel target are mapped back with each patch's own statistics from the
/// original image (per channel for BootMAE, per patch for MAE), as the MAE demo does, so only the content is learned.
/// </summary>
internal static class ReconstructionPreview
{
    public static string Write(BootMaeNetwork network, float[] pixels01, int count, Device device, int seed, string path, string title)
    {
        var a = network.Architecture;
        var s = network.Settings;
        bool wasTraining = network.training;
        network.eval();
        try
        {
            using var scope = NewDisposeScope();
            using var guard = no_grad();
            int perImage = a.Channels * a.ImageSize * a.ImageSize;
            var images = BootMaeEncoder.Normalize(tensor(pixels01.AsSpan(0, count * perImage).ToArray(), new long[] { count, a.Channels, a.ImageSize, a.ImageSize }).to(device), a);
            using var masks = MaskingGenerator.ForSettings(a, s, seed).Next(count, device);
            var prediction = network.Forward(images, masks).Pixels;
            var reconstruction = s.Mode == BootMaeMode.Mae ? FromMaePatches(prediction, images, a, s.NormPixTarget) : FromPerChannelTarget(prediction, images, a.PatchSize, s.NormPixTarget, s.PixelTargetEpsilon);
            var recon01 = InputNormalization.Invert(reconstruction, a.Normalization).clamp_(TorchScalars.ZeroDouble, TorchScalars.OneDouble).cpu().contiguous().data<float>().ToArray();
            var maskValues = masks.Mask.cpu().contiguous().data<float>().ToArray();
            int n = a.NumPatches;
            var originals = new List<float[]>();
            var reconstructions = new List<float[]>();
            var patchMasks = new List<bool[]>();
            for (int i = 0; i < count; i++)
            {
                originals.Add(pixels01.AsSpan(i * perImage, perImage).ToArray());
                reconstructions.Add(recon01.AsSpan(i * perImage, perImage).ToArray());
                patchMasks.Add(maskValues.AsSpan(i * n, n).ToArray().Select(v => v > 0.5f).ToArray());
            }

            return BootMaePictures.ReconstructionGrid(originals, patchMasks, reconstructions, a.Channels, a.ImageSize, a.ImageSize, a.PatchSize, path, title);
        }
        finally
        {
            network.train(wasTraining);
        }
    }

    // BootMAE: B×C×H×W in the per-patch, per-channel normalised space of the loss's own pixel target.
    private static Tensor FromPerChannelTarget(Tensor prediction, Tensor images, int p, bool normalized, double epsilon)
    {
        if (!normalized)
        {
            return prediction;
        }

        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / p, w = images.shape[3] / p;
        var (mean, std) = BootMaeLosses.PatchStatistics(images, p, epsilon);
        return (prediction.reshape(b, c, h, p, w, p) * std).add(mean, TorchScalars.One).reshape(b, c, h * p, w * p);
    }

    // MAE: B×N×P²C patches normalised over the whole patch (unbiased variance, eps 1e-6).
    private static Tensor FromMaePatches(Tensor prediction, Tensor images, BootMaeArchitecture a, bool normalized)
    {
        var patches = prediction;
        if (normalized)
        {
            var target = BootMaeLosses.Patchify(images, a.PatchSize);
            var mean = target.mean(new long[] { -1 }, keepdim: true);
            using var eps = 1e-6.ToScalar();
            var std = target.var(new long[] { -1 }, unbiased: true, keepdim: true).add(eps, TorchScalars.One).sqrt();
            patches = (prediction * std).add(mean, TorchScalars.One);
        }

        long b = images.shape[0], g = a.GridSize, p = a.PatchSize, c = a.Channels;
        return patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p);
    }
}
