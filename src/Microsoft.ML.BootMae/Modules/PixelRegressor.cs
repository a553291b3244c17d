using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Pixel regressor (spec §2.3). Field names are the reference's top-level keys: down, mask_token, de_pos_embed,
// decode_blocks, decode_norm, lm_head (lm_head.proj is the ConvTranspose2d). Mask tokens get the d_r-wide table,
// visible tokens get no decoder PE. Cross-attention reads the shallow (pre-LN) encoder feature.
internal sealed class PixelRegressor : nn.Module<Tensor, Tensor?, MaskBatch, Tensor>, IMixedPrecisionModule
{
    private readonly Linear down;
    private readonly Parameter mask_token;
    private readonly Parameter de_pos_embed;
    private readonly ModuleList<DecoderBlock> decode_blocks;
    private readonly LayerNorm decode_norm;
    private readonly PatchDeEmbed lm_head;

    public PixelRegressor(BootMaeArchitecture a, bool inject) : base(nameof(PixelRegressor))
    {
        int dr = a.RegressorDim;
        down = nn.Linear(a.EmbedDim, dr);
        mask_token = new Parameter(zeros(1, 1, dr));
        de_pos_embed = SinCosPositionEmbedding.CreateParameter(a.GridSize, dr);
        decode_blocks = new ModuleList<DecoderBlock>(Enumerable.Range(0, a.DecoderDepth)
            .Select(_ => new DecoderBlock(dr, a.EmbedDim, a.RegressorHeads, a.MlpRatio, inject)).ToArray());
        decode_norm = nn.LayerNorm(dr, eps: 1e-6);
        lm_head = new PatchDeEmbed(dr, a.Channels, a.PatchSize, a.GridSize);
        RegisterComponents();
    }

    public IReadOnlyList<DecoderBlock> Blocks => decode_blocks.ToList();

    public bool MixedPrecision { get; set; }

    // latent: final-LN encoder output B×(1+N_v)×D; context: shallow feature or null when injection is off.
    // Returns the predicted image B×C×H×W.
    public override Tensor forward(Tensor latent, Tensor? context, MaskBatch masks)
    {
        var x = DecoderSequence.Assemble(Modules.MixedPrecision.Linear32(down, latent, MixedPrecision), mask_token, de_pos_embed, masks);
        foreach (var block in decode_blocks)
        {
            x = block.forward(x, context);
        }

        return lm_head.forward(decode_norm.forward(x)[.., 1..]);
    }

    public void Initialize(Generator generator)
    {
        WeightInit.XavierUniform(down.weight!, generator);
        WeightInit.Zero(down.bias);
        WeightInit.TruncatedNormalOneSigma(mask_token, 0.02, generator);
        foreach (var block in decode_blocks)
        {
            block.Initialize(generator);
        }

        // lm_head keeps the framework's default init, as in the reference (drawn from the seeded generator).
        lm_head.Initialize(generator);
    }
}
