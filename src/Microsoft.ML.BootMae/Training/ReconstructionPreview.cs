using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Visualization;
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
            var images = InputNormalization.Input(pixels01, count, a, device);
            using var masks = MaskingGenerator.ForSettings(a, s, seed).Next(count, device);
            var prediction = network.Forward(images, masks).Pixels;
            // Back from the loss's target space with the loss's own statistics of each original patch.
            var reconstruction = s.Mode == BootMaeMode.Mae
                ? BootMaeLosses.FromMaeTarget(prediction, images, a.GridSize, a.PatchSize, s.NormPixTarget)
                : BootMaeLosses.FromPixelTarget(prediction, images, a.PatchSize, s.NormPixTarget, s.PixelTargetEpsilon);
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

            return BootMaePictures.ReconstructionGrid(originals, patchMasks, reconstructions, a, path, new BootMaePictureOptions { Title = title });
        }
        finally
        {
            network.train(wasTraining);
        }
    }
}
