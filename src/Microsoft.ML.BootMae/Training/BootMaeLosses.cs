using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// The pretraining losses of spec §4 (BootMAE) and §8 (MAE). All inputs and outputs live in the caller's dispose scope.
internal static class BootMaeLosses
{
    // Per-patch, per-channel statistics of an image B×C×H×W (population variance): mean and sqrt(var + eps), each
    // B×C×h×1×w×1 over the B×C×h×P×w×P view. Shared by the pixel target and the reconstruction preview.
    public static (Tensor Mean, Tensor Std) PatchStatistics(Tensor images, int patchSize, double epsilon)
    {
        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        var x = images.reshape(b, c, h, patchSize, w, patchSize);
        using var eps = epsilon.ToScalar();
        var mean = x.mean(new long[] { 3, 5 }, keepdim: true);
        var std = x.var(new long[] { 3, 5 }, unbiased: false, keepdim: true).add_(eps, TorchScalars.One).sqrt_();
        return (mean, std);
    }

    // Per-patch, per-channel normalised image (population variance, eps ε: official 1e-5), kept in image layout B×C×H×W.
    public static Tensor PixelTarget(Tensor images, int patchSize, bool normalize, double epsilon = 1e-5)
    {
        if (!normalize)
        {
            return images;
        }

        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        var (mean, std) = PatchStatistics(images, patchSize, epsilon);
        return images.reshape(b, c, h, patchSize, w, patchSize).sub(mean).div_(std).reshape(b, c, h * patchSize, w * patchSize);
    }

    // The inverse of PixelTarget for a prediction in its space: x̂·std + mean with each patch's statistics from images,
    // back in image layout B×C×H×W (for pictures; the identity when the target is not normalised).
    public static Tensor FromPixelTarget(Tensor prediction, Tensor images, int patchSize, bool normalize, double epsilon)
    {
        if (!normalize)
        {
            return prediction;
        }

        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        var (mean, std) = PatchStatistics(images, patchSize, epsilon);
        return (prediction.reshape(b, c, h, patchSize, w, patchSize) * std).add(mean, TorchScalars.One).reshape(b, c, h * patchSize, w * patchSize);
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
        return m.mul(pooled.add_(TorchScalars.One, TorchScalars.One)).reshape(b, gridSize * gridSize);
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

    // The feature target: the teacher's tokens (B×N×D or B×S×D), optionally standardised per channel over every
    // token of the batch (population variance, eps 1e-6) to remove the component all tokens share, then LN'd.
    public static Tensor FeatureTarget(Tensor teacher, BootMaeFeatureTargetNormalization normalization)
    {
        if (normalization == BootMaeFeatureTargetNormalization.BatchStandardized)
        {
            using var eps = 1e-6.ToScalar();
            var dims = new long[] { 0, 1 };
            var mean = teacher.mean(dims, keepdim: true);
            var std = teacher.var(dims, unbiased: false, keepdim: true).add_(eps, TorchScalars.One).sqrt_();
            teacher = teacher.sub(mean).div_(std);
        }

        return FeatureNorm(teacher);
    }

    // L_P = Σ w·(T − LN(f̂))² / (Σm · D) with T = FeatureTarget(teacher). prediction B×N×D; weight and mask B×N.
    // subsetIds (B×S) restricts the loss to the patches the teacher saw (teacher B×S×D); null means teacher is B×N×D.
    // With diagnostics, also the unweighted loss and the target's shared-energy share (see LossDiagnostics).
    public static (Tensor Loss, Tensor? Unweighted, Tensor? TargetSharedEnergy) FeatureLoss(Tensor prediction, Tensor teacher, Tensor mask, Tensor weight,
        Tensor? subsetIds, BootMaeFeatureTargetNormalization normalization = BootMaeFeatureTargetNormalization.LayerNorm, bool diagnostics = false)
    {
        long d = prediction.shape[2];
        if (subsetIds is not null)
        {
            prediction = prediction.gather(1, subsetIds.unsqueeze(-1).expand(-1, -1, d));
            mask = mask.gather(1, subsetIds);
            weight = weight.gather(1, subsetIds);
        }

        var target = FeatureTarget(teacher, normalization);
        var err = (target - FeatureNorm(prediction)).pow(TorchScalars.Two);
        using var width = d.ToScalar();
        var denominator = mask.sum().mul(width);
        var loss = (weight.unsqueeze(-1) * err).sum() / denominator;
        if (!diagnostics)
        {
            return (loss, null, null);
        }

        var unweighted = (mask.unsqueeze(-1) * err).sum() / denominator;
        // Share of the target's energy in what all images have in common at each position: 1 means every image gets
        // the same target (the predictor can only learn positional means), 0 means nothing is shared. The batch mean of
        // B independent targets keeps 1/B of their energy by chance, so the ratio r is de-biased: (B·r − 1)/(B − 1).
        long b = target.shape[0];
        var ratio = target.mean(new long[] { 0 }).pow(TorchScalars.Two).sum() / target.pow(TorchScalars.Two).mean(new long[] { 0 }).sum();
        using var batch = ((double)b).ToScalar();
        using var one = 1.0.ToScalar();
        using var zero = 0.0.ToScalar();
        using var denominatorB = Math.Max(1.0, b - 1).ToScalar();
        var shared = b > 1 ? ratio.mul(batch).sub_(one).div_(denominatorB).clamp_(zero, one) : ratio;
        return (loss, unweighted, shared);
    }

    // MAE's patchify: B×C×H×W → B×N×(P·P·C) with the last dimension ordered (p, q, c).
    public static Tensor Patchify(Tensor images, int patchSize)
    {
        long b = images.shape[0], c = images.shape[1], h = images.shape[2] / patchSize, w = images.shape[3] / patchSize;
        return images.reshape(b, c, h, patchSize, w, patchSize)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(b, h * w, patchSize * patchSize * c);
    }

    // The inverse of Patchify: B×N×(P·P·C) → B×C×H×W.
    public static Tensor Unpatchify(Tensor patches, int channels, int gridSize, int patchSize)
    {
        long b = patches.shape[0], g = gridSize, p = patchSize, c = channels;
        return patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p);
    }

    // MAE's whole-patch statistics of patchified pixels B×N×P²C: mean and sqrt(unbiased variance + 1e-6), each B×N×1.
    // Shared by MAE's target and the reconstruction preview.
    public static (Tensor Mean, Tensor Std) MaePatchStatistics(Tensor patches)
    {
        var mean = patches.mean(new long[] { -1 }, keepdim: true);
        var variance = patches.var(-1, unbiased: true, keepdim: true);
        using var eps = 1e-6.ToScalar();
        return (mean, variance.add_(eps, TorchScalars.One).sqrt_());
    }

    // The inverse of MAE's target for a prediction B×N×P²C in its space, back in image layout B×C×H×W (for pictures).
    public static Tensor FromMaeTarget(Tensor prediction, Tensor images, int gridSize, int patchSize, bool normalize)
    {
        var patches = prediction;
        if (normalize)
        {
            var (mean, std) = MaePatchStatistics(Patchify(images, patchSize));
            patches = (prediction * std).add(mean, TorchScalars.One);
        }

        return Unpatchify(patches, (int)images.shape[1], gridSize, patchSize);
    }

    // MAE loss: whole-patch normalisation (unbiased variance, eps 1e-6), per-patch MSE, masked mean. prediction B×N×P²C.
    public static Tensor MaeLoss(Tensor prediction, Tensor images, Tensor mask, int patchSize, bool normalize)
    {
        var target = Patchify(images, patchSize);
        if (normalize)
        {
            var (mean, std) = MaePatchStatistics(target);
            target = (target - mean) / std;
        }

        var perPatch = (prediction - target).pow(TorchScalars.Two).mean(new long[] { -1 });
        return (perPatch * mask).sum() / mask.sum();
    }

    // The full objective for one forward. featureWeight is λ_e (the trainer's ramp); teacher is B×N×D or B×S×D
    // (then teacherIds gives the S patch ids). Unused parts are null. With diagnostics, Diagnostics holds the
    // baselines and unweighted losses the trainer reports; they cost a few reductions and add nothing to the graph.
    public static LossResult Compute(
        BootMaeNetwork network, BootMaeForward forward, Tensor images, MaskBatch masks,
        Tensor? teacher, Tensor? teacherIds, double featureWeight, bool diagnostics = false)
    {
        var a = network.Architecture;
        var s = network.Settings;
        if (s.Mode == BootMaeMode.Mae)
        {
            var mae = MaeLoss(forward.Pixels, images, masks.Mask, a.PatchSize, s.NormPixTarget);
            LossDiagnostics? maeDiagnostics = null;
            if (diagnostics)
            {
                using var _ = no_grad();
                var zero = zeros_like(forward.Pixels);
                maeDiagnostics = new LossDiagnostics(mae.detach(), MaeLoss(zero, images, masks.Mask, a.PatchSize, s.NormPixTarget), null, null);
            }

            return new LossResult(mae, mae, null, maeDiagnostics);
        }

        var weight = WeightMask(masks.Mask, a.GridSize, s.WeightMask);
        Tensor? pixel = null;
        Tensor? feature = null;
        Tensor? pixelUnweighted = null, pixelBaseline = null, featureUnweighted = null, shared = null;
        if (s.UsesPixelLoss)
        {
            var target = PixelTarget(images, a.PatchSize, s.NormPixTarget, s.PixelTargetEpsilon);
            pixel = PixelLoss(forward.Pixels, target, masks.Mask, weight, a.GridSize, a.PatchSize);
            if (diagnostics)
            {
                using var _ = no_grad();
                var mPix = ToPixels(masks.Mask, a.GridSize, a.PatchSize);
                var denominator = mPix.mean();
                pixelUnweighted = (mPix * (forward.Pixels - target).pow(TorchScalars.Two)).mean() / denominator;
                // What predicting 0 everywhere would score in the weighted loss as logged.
                pixelBaseline = (ToPixels(weight, a.GridSize, a.PatchSize) * target.pow(TorchScalars.Two)).mean() / denominator;
            }
        }

        if (s.UsesFeatureLoss)
        {
            if (teacher is null || forward.Features is null)
            {
                throw new ArgumentException("The feature loss needs the teacher target and the predictor output.", nameof(teacher));
            }

            (feature, featureUnweighted, shared) = FeatureLoss(forward.Features, teacher, masks.Mask, weight, teacherIds, s.FeatureTargetNormalization, diagnostics);
        }

        Tensor total;
        if (pixel is not null && feature is not null)
        {
            using var lambda = featureWeight.ToScalar();
            total = pixel.add(feature.mul(lambda), TorchScalars.One);
        }
        else if (pixel is not null)
        {
            total = pixel;
        }
        else if (feature is not null)
        {
            using var lambda = featureWeight.ToScalar();
            total = feature.mul(lambda);
        }
        else
        {
            throw new InvalidOperationException("Settings select no loss.");
        }

        var result = diagnostics ? new LossDiagnostics(pixelUnweighted?.detach(), pixelBaseline, featureUnweighted?.detach(), shared?.detach()) : null;
        return new LossResult(total, pixel, feature, result);
    }
}

// Total = L_R + λ_e·L_P (or the MAE loss); the parts are null when switched off.
internal readonly record struct LossResult(Tensor Total, Tensor? Pixel, Tensor? Feature, LossDiagnostics? Diagnostics = null);

// What the trainer reports beside the losses, so a user can tell learning from a trivial solution:
// the pixel loss without the centre weighting, the pixel loss of predicting 0 (the trivial baseline, weighted as
// logged), the feature loss without weighting, and the share of the feature target's energy common to all images.
internal sealed record LossDiagnostics(Tensor? PixelUnweighted, Tensor? PixelZeroBaseline, Tensor? FeatureUnweighted, Tensor? FeatureTargetSharedEnergy);
