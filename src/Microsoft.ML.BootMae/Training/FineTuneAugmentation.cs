using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// Batch augmentations of fine-tuning, drawn from a seeded System.Random so runs repeat on any device. Parameters
// are drawn in .NET and applied with one batched tensor op each (no per-pixel native calls).
internal static class FineTuneAugmentation
{
    private static readonly double LogRatioMin = Math.Log(3.0 / 4.0);
    private static readonly double LogRatioMax = Math.Log(4.0 / 3.0);

    // Random resized crop (area fraction [minArea, 1], aspect [3/4, 4/3]) back to full size with bilinear sampling,
    // plus a horizontal flip with probability ½; one affine_grid + grid_sample for the whole batch. Callers pass
    // ImageAugmentation.For(architecture).MinScale, the floor the ML.NET layer uses while decoding, so the on-device
    // and decode-time augmentations of one architecture are the same.
    public static Tensor RandomResizedCropFlip(Tensor images, Random random, double minArea)
    {
        long b = images.shape[0];
        var theta = new float[b * 6];
        for (long i = 0; i < b; i++)
        {
            double w = 1, h = 1;
            for (int attempt = 0; attempt < 10; attempt++)
            {
                double area = minArea + ((1 - minArea) * random.NextDouble());
                double ratio = Math.Exp(LogRatioMin + ((LogRatioMax - LogRatioMin) * random.NextDouble()));
                double cw = Math.Sqrt(area * ratio), ch = Math.Sqrt(area / ratio);
                if (cw <= 1 && ch <= 1)
                {
                    (w, h) = (cw, ch);
                    break;
                }
            }

            // In normalised coordinates the crop spans [c − w, c + w] with c ∈ [−(1 − w), 1 − w].
            double cx = (1 - w) * ((2 * random.NextDouble()) - 1);
            double cy = (1 - h) * ((2 * random.NextDouble()) - 1);
            double flip = random.NextDouble() < 0.5 ? -1 : 1;
            theta[(i * 6) + 0] = (float)(w * flip);
            theta[(i * 6) + 2] = (float)cx;
            theta[(i * 6) + 4] = (float)h;
            theta[(i * 6) + 5] = (float)cy;
        }

        var affine = tensor(theta, new[] { b, 2L, 3L }).to(images.device);
        var grid = nn.functional.affine_grid(affine, images.shape, align_corners: false);
        return nn.functional.grid_sample(images, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Border, align_corners: false);
    }

    // Soft targets B×K: one-hot smoothed as timm does, (1 − ε)·onehot + ε/K.
    public static Tensor SmoothedTargets(Tensor labels, int numClasses, double smoothing)
    {
        var onehot = nn.functional.one_hot(labels, numClasses).to(ScalarType.Float32);
        if (smoothing <= 0)
        {
            return onehot;
        }

        using var keep = (1 - smoothing).ToScalar();
        using var spread = (smoothing / numClasses).ToScalar();
        return onehot.mul_(keep).add_(spread, TorchScalars.One);
    }

    // timm Mixup (mode "batch"): pairs each image with the batch reversed; mixup and cutmix each with probability 1,
    // and when both are on one of them per batch with probability ½. Returns the mixed images and targets.
    public static (Tensor Images, Tensor Targets) MixupCutmix(Tensor images, Tensor targets, double mixupAlpha, double cutmixAlpha, Random random)
    {
        bool useCutmix = cutmixAlpha > 0 && (mixupAlpha <= 0 || random.NextDouble() < 0.5);
        var flippedImages = images.flip(0);
        double lambda;
        if (useCutmix)
        {
            lambda = SampleBeta(cutmixAlpha, random);
            long h = images.shape[2], w = images.shape[3];
            double cut = Math.Sqrt(1 - lambda);
            long ch = (long)(h * cut), cw = (long)(w * cut);
            long cy = random.NextInt64(h), cx = random.NextInt64(w);
            long y0 = Math.Clamp(cy - (ch / 2), 0, h), y1 = Math.Clamp(cy + (ch / 2), 0, h);
            long x0 = Math.Clamp(cx - (cw / 2), 0, w), x1 = Math.Clamp(cx + (cw / 2), 0, w);
            var box = new float[h * w];
            for (long y = y0; y < y1; y++)
            {
                Array.Fill(box, 1f, (int)((y * w) + x0), (int)(x1 - x0));
            }

            // The label weight follows the box actually pasted (after clipping at the border).
            lambda = 1 - ((double)(y1 - y0) * (x1 - x0) / (h * w));
            var mask = tensor(box, new[] { 1L, 1L, h, w }).to(images.device);
            images = (images * mask.negative().add(TorchScalars.One, TorchScalars.One)).add(flippedImages * mask, TorchScalars.One);
        }
        else
        {
            lambda = SampleBeta(mixupAlpha, random);
        }

        using var mine = lambda.ToScalar();
        using var theirs = (1 - lambda).ToScalar();
        if (!useCutmix)
        {
            images = images.mul(mine).add(flippedImages.mul(theirs), TorchScalars.One);
        }

        return (images, targets.mul(mine).add(targets.flip(0).mul(theirs), TorchScalars.One));
    }

    // Beta(α, α) = X / (X + Y) with X, Y ~ Gamma(α).
    internal static double SampleBeta(double alpha, Random random)
    {
        double x = SampleGamma(alpha, random), y = SampleGamma(alpha, random);
        return x + y > 0 ? x / (x + y) : 0.5;
    }

    // Marsaglia–Tsang; for α < 1, Gamma(α) = Gamma(α + 1)·U^(1/α).
    private static double SampleGamma(double alpha, Random random)
    {
        if (alpha < 1)
        {
            return SampleGamma(alpha + 1, random) * Math.Pow(1 - random.NextDouble(), 1 / alpha);
        }

        double d = alpha - (1.0 / 3), c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double z, v;
            do
            {
                // Box–Muller standard normal.
                z = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
                v = 1 + (c * z);
            }
            while (v <= 0);

            v = v * v * v;
            double u = 1 - random.NextDouble();
            if (Math.Log(u) < (0.5 * z * z) + d - (d * v) - (d * Math.Log(v)))
            {
                return d * v;
            }
        }
    }
}
