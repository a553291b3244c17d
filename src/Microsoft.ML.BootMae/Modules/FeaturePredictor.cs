using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Feature predictor (spec §2.4): down_1, mask_token_1, decode_blocks_1, decode_norm_1, lm_head_1 (one Linear D→D).
// Mask tokens get the encoder's table (passed to forward, not owned, so there is no duplicate key); cross-attention reads the
// deep (pre-LN) feature.
internal sealed class FeaturePredictor : nn.Module, IMixedPrecisionModule
{
    private readonly Linear down_1;
    private readonly Parameter mask_token_1;
    private readonly ModuleList<DecoderBlock> decode_blocks_1;
    private readonly LayerNorm decode_norm_1;
    private readonly Linear lm_head_1;

    public FeaturePredictor(BootMaeArchitecture a, bool inject) : base(nameof(FeaturePredictor))
    {
        int d = a.EmbedDim;
        down_1 = nn.Linear(d, d);
        mask_token_1 = new Parameter(zeros(1, 1, d));
        decode_blocks_1 = new ModuleList<DecoderBlock>(Enumerable.Range(0, a.DecoderDepth)
            .Select(_ => new DecoderBlock(d, d, a.PredictorHeads, a.MlpRatio, inject)).ToArray());
        decode_norm_1 = nn.LayerNorm(d, eps: 1e-6);
        lm_head_1 = nn.Linear(d, d);
        RegisterComponents();
    }

    public IReadOnlyList<DecoderBlock> Blocks => decode_blocks_1.ToList();

    public bool MixedPrecision { get; set; }

    // Returns the predicted features of all patches, B×N×D. encoderPositions is the encoder's 1×(1+N)×D table.
    public Tensor forward(Tensor latent, Tensor? context, MaskBatch masks, Tensor encoderPositions)
    {
        var x = DecoderSequence.Assemble(Modules.MixedPrecision.Linear32(down_1, latent, MixedPrecision), mask_token_1, encoderPositions, masks);
        foreach (var block in decode_blocks_1)
        {
            x = block.forward(x, context);
        }

        return Modules.MixedPrecision.Linear32(lm_head_1, decode_norm_1.forward(x)[.., 1..], MixedPrecision);
    }

    public void Initialize(Generator generator)
    {
        WeightInit.XavierUniform(down_1.weight!, generator);
        WeightInit.Zero(down_1.bias);
        WeightInit.TruncatedNormalOneSigma(mask_token_1, 0.02, generator);
        foreach (var block in decode_blocks_1)
        {
            block.Initialize(generator);
        }

        WeightInit.XavierUniform(lm_head_1.weight!, generator);
        WeightInit.Zero(lm_head_1.bias);
    }
}
