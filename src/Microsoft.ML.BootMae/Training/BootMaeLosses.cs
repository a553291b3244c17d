using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// The pretraining losses of spec §4 (BootMAE) and §8 (MAE). All inputs and outputs live in the caller's dispose scope.
internal static class BootMaeLosses
{
    // Per-patch, per-channel normalised image (population variance, eps 1e-5), kept in image layout B×C×H×W.
    public static Tensor PixelTarget(Tensor images, int patchSize, bool normalize)
    {
        if (!normalize)
        {
            return images;
        }

        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        var x = images.reshape(b, c, h, patchSize, w, patchSize);
        var mean = x.mean(new long[] { 3, 5 }, keepdim: true);
        var variance = x.var(new long[] { 3, 5 }, unbiased: false, keepdim: true);
        using var eps = 1e-5.ToScalar();
        return ((x - mean) / variance.add(eps, TorchScalars.One).sqrt()).reshape(b, c, h * patchSize, w * patchSize);
    }

    // w = m·(1 + AvgPool3×3(m)) on the patch grid (stride 1, zero padding 1, always dividing by 9); w = m when off.
    // mask: B×N (1 = masked). Returns B×N.
    public static Tensor WeightMask(Tensor mask, int gridSize, bool weighted)
    {
        if (!weighted)
        {
            return mask;
        }

        long b = mask.shape[0];
        var m = mask.reshape(b, 1, gridSize, gridSize);
        var pooled = nn.functional.avg_pool2d(m, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, count_include_pad: true);
        return (m * pooled.add(TorchScalars.One, TorchScalars.One)).reshape(b, gridSize * gridSize);
    }

    // Patch-grid values B×N → pixel map B×1×H×W (nearest upsampling).
    public static Tensor ToPixels(Tensor perPatch, int gridSize, int patchSize)
    {
        long b = perPatch.shape[0];
        return perPatch.reshape(b, 1, gridSize, 1, gridSize, 1)
            .expand(b, 1, gridSize, patchSize, gridSize, patchSize)
            .reshape(b, 1, gridSize * patchSize, gridSize * patchSize);
    }

    // L_R = mean(w·(x̂ − g)²) / mean(m) over pixel elements: divided by the masked count, not Σw.
    public static Tensor PixelLoss(Tensor prediction, Tensor target, Tensor mask, Tensor weight, int gridSize, int patchSize)
    {
        var wPix = ToPixels(weight, gridSize, patchSize);
        var mPix = ToPixels(mask, gridSize, patchSize);
        var err = (prediction - target).pow(TorchScalars.Two);
        return (wPix * err).mean() / mPix.mean();
    }

    // Parameter-free LayerNorm over the last dimension (eps 1e-6), applied to the teacher target and to the prediction.
    public static Tensor FeatureNorm(Tensor x)
        => nn.functional.layer_norm(x, new long[] { x.shape[^1] }, eps: 1e-6);

    // L_P = Σ w·(LN(t) − LN(f̂))² / (Σm · D). prediction B×N×D; weight and mask B×N.
    // subsetIds (B×S) restricts the loss to the patches the teacher saw (teacher B×S×D); null means teacher is B×N×D.
    public static Tensor FeatureLoss(Tensor prediction, Tensor teacher, Tensor mask, Tensor weight, Tensor? subsetIds)
    {
        long d = prediction.shape[2];
        if (subsetIds is not null)
        {
            prediction = prediction.gather(1, subsetIds.unsqueeze(-1).expand(-1, -1, d));
            mask = mask.gather(1, subsetIds);
            weight = weight.gather(1, subsetIds);
        }

        var err = (FeatureNorm(teacher) - FeatureNorm(prediction)).pow(TorchScalars.Two);
        using var dim = d.ToScalar();
        return (weight.unsqueeze(-1) * err).sum() / mask.sum().mul(dim);
    }

    // MAE's patchify: B×C×H×W → B×N×(P·P·C) with the last dimension ordered (p, q, c).
    public static Tensor Patchify(Tensor images, int patchSize)
    {
        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        return images.reshape(b, c, h, patchSize, w, patchSize)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(b, h * w, patchSize * patchSize * c);
    }

    // MAE loss: whole-patch normalisation (unbiased variance, eps 1e-6), per-patch MSE, masked mean. prediction B×N×P²C.
    public static Tensor MaeLoss(Tensor prediction, Tensor images, Tensor mask, int patchSize, bool normalize)
    {
        var target = Patchify(images, patchSize);
        if (normalize)
        {
            var mean = target.mean(new long[] { -1 }, keepdim: true);
            var variance = target.var(-1, unbiased: true, keepdim: true);
            using var eps = 1e-6.ToScalar();
            target = (target - mean) / variance.add(eps, TorchScalars.One).sqrt();
        }

        var perPatch = (prediction - target).pow(TorchScalars.Two).mean(new long[] { -1 });
        return (perPatch * mask).sum() / mask.sum();
    }

    // The full objective for one forward. featureWeight is λ_e (the trainer's ramp); teacher is B×N×D or B×S×D
    // (then teacherIds gives the S patch ids). Unused parts are null.
    public static LossResult Compute(
        BootMaeNetwork network, BootMaeForward forward, Tensor images, MaskBatch masks,
        Tensor? teacher, Tensor? teacherIds, double featureWeight)
    {
        var a = network.Architecture;
        var s = network.Settings;
        if (s.Mode == PretrainMode.Mae)
        {
            var mae = MaeLoss(forward.Pixels, images, masks.Mask, a.PatchSize, s.NormPixTarget);
            return new LossResult(mae, mae, null);
        }

        var weight = WeightMask(masks.Mask, a.GridSize, s.WeightMask);
        Tensor? pixel = null;
        Tensor? feature = null;
        if (s.UsesPixelLoss)
        {
            var target = PixelTarget(images, a.PatchSize, s.NormPixTarget);
            pixel = PixelLoss(forward.Pixels, target, masks.Mask, weight, a.GridSize, a.PatchSize);
        }

        if (s.UsesFeatureLoss)
        {
            if (teacher is null || forward.Features is null)
            {
                throw new ArgumentException("The feature loss needs the teacher target and the predictor output.", nameof(teacher));
            }

            feature = FeatureLoss(forward.Features, teacher, masks.Mask, weight, teacherIds);
        }

        using var lambda = featureWeight.ToScalar();
        var total = (pixel, feature) switch
        {
            (not null, not null) => pixel.add(feature.mul(lambda), TorchScalars.One),
            (not null, null) => pixel,
            (null, not null) => feature.mul(lambda),
            _ => throw new InvalidOperationException("Settings select no loss."),
        };
        return new LossResult(total, pixel, feature);
    }
}

// Total = L_R + λ_e·L_P (or the MAE loss); the parts are null when switched off.
internal readonly record struct LossResult(Tensor Total, Tensor? Pixel, Tensor? Feature);
