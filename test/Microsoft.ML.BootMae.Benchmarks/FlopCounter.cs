using Microsoft.ML.BootMae.Training;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// Analytic FLOPs of one pretraining step: 2·M·N·K for every matrix product (linear layers, attention scores and
/// values, the patch embedding and the pixel head); trained parts count three times their forward pass
/// (forward + backward), the teacher once. Norms, softmax and elementwise work are not counted.
/// </summary>
internal static class FlopCounter
{
    public static double PerStep(BootMaeArchitecture a, BootMaePretrainerSettings s, int batch)
    {
        int n = a.NumPatches;
        int masked = n - (int)((1 - s.MaskRatio) * n);
        int visible = n - masked;
        int patchValues = a.Channels * a.PatchSize * a.PatchSize;
        double student = 2.0 * n * patchValues * a.EmbedDim;   // patch embedding runs on every patch before the gather
        student += a.Depth * Block(1 + visible, a.EmbedDim, a.Heads, a.MlpRatio, context: 0, contextDim: 0);
        double teacher = 0;
        if (s.Mode == BootMaeMode.Mae)
        {
            student += 2.0 * (1 + visible) * a.EmbedDim * a.RegressorDim;
            student += s.MaeDecoderDepth * Block(1 + n, a.RegressorDim, a.RegressorHeads, a.MlpRatio, 0, 0);
            student += 2.0 * n * a.RegressorDim * patchValues;
        }
        else
        {
            int context = 1 + visible;
            student += 2.0 * (1 + visible) * a.EmbedDim * a.RegressorDim;
            student += a.DecoderDepth * Block(1 + n, a.RegressorDim, a.RegressorHeads, a.MlpRatio, s.InjectRegressor ? context : 0, a.EmbedDim);
            student += 2.0 * n * a.RegressorDim * patchValues;
            if (s.Target != BootMaeTarget.Pixel)
            {
                student += 2.0 * (1 + visible) * a.EmbedDim * a.EmbedDim;
                student += a.DecoderDepth * Block(1 + n, a.EmbedDim, a.PredictorHeads, a.MlpRatio, s.InjectPredictor ? context : 0, a.EmbedDim);
                student += 2.0 * n * a.EmbedDim * a.EmbedDim;
                teacher = TeacherPerImage(a, s);
            }
        }

        return batch * (3 * student + teacher);
    }

    // The teacher's forward (no backward) for one batch: zero where there is no teacher (MAE mode, pixel target).
    public static double Teacher(BootMaeArchitecture a, BootMaePretrainerSettings s, int batch) =>
        s.Mode == BootMaeMode.Mae || s.Target == BootMaeTarget.Pixel ? 0 : batch * TeacherPerImage(a, s);

    private static double TeacherPerImage(BootMaeArchitecture a, BootMaePretrainerSettings s)
    {
        int n = a.NumPatches;
        int masked = n - (int)((1 - s.MaskRatio) * n);
        int seen = s.TeacherFraction >= 1 ? n : Math.Min(masked, (int)Math.Round(s.TeacherFraction * n));
        return 2.0 * n * a.Channels * a.PatchSize * a.PatchSize * a.EmbedDim + a.Depth * Block(1 + seen, a.EmbedDim, a.Heads, a.MlpRatio, 0, 0);
    }

    // One pre-norm block over t tokens of width dim; with a context, a cross-attention over that many tokens.
    private static double Block(int t, int dim, int heads, double mlpRatio, int context, int contextDim)
    {
        double inner = heads * (dim / heads);
        double hidden = (int)(dim * mlpRatio);
        double flops = 2.0 * t * dim * 3 * inner        // qkv
            + 2.0 * 2 * t * t * inner                    // scores and values
            + 2.0 * t * inner * dim                      // output projection
            + 2.0 * 2 * t * dim * hidden;                // MLP
        if (context > 0)
        {
            flops += 2.0 * t * dim * inner               // q
                + 2.0 * context * contextDim * 2 * inner // kv
                + 2.0 * 2 * t * context * inner          // scores and values
                + 2.0 * t * inner * dim;                 // output projection
        }

        return flops;
    }
}
