using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// MAE-mode decoder (spec §8): decoder_embed, mask_token, decoder_pos_embed (added to every token, cls slot included),
// plain blocks (no cross-attention), decoder_norm, decoder_pred Linear(d_r → P²C). Output B×N×P²C in MAE's patchify
// order (p, q, c).
internal sealed class MaeDecoder : nn.Module<Tensor, MaskBatch, Tensor>, IMixedPrecisionModule
{
    private readonly Linear decoder_embed;
    private readonly Parameter mask_token;
    private readonly Parameter decoder_pos_embed;
    private readonly ModuleList<EncoderBlock> decoder_blocks;
    private readonly LayerNorm decoder_norm;
    private readonly Linear decoder_pred;

    public MaeDecoder(BootMaeArchitecture a, int depth) : base(nameof(MaeDecoder))
    {
        int dr = a.RegressorDim;
        decoder_embed = nn.Linear(a.EmbedDim, dr);
        mask_token = new Parameter(zeros(1, 1, dr));
        decoder_pos_embed = SinCosPositionEmbedding.CreateParameter(a.GridSize, dr);
        decoder_blocks = new ModuleList<EncoderBlock>(Enumerable.Range(0, depth)
            .Select(_ => new EncoderBlock(dr, a.RegressorHeads, a.MlpRatio)).ToArray());
        decoder_norm = nn.LayerNorm(dr, eps: 1e-6);
        decoder_pred = nn.Linear(dr, a.PatchSize * a.PatchSize * a.Channels);
        RegisterComponents();
    }

    public int Depth => decoder_blocks.Count;

    public bool MixedPrecision { get; set; }

    public override Tensor forward(Tensor latent, MaskBatch masks)
    {
        var x = DecoderSequence.Assemble(Modules.MixedPrecision.Linear32(decoder_embed, latent, MixedPrecision), mask_token, null, masks).add(decoder_pos_embed, TorchScalars.One);
        foreach (var block in decoder_blocks)
        {
            x = block.forward(x);
        }

        return Modules.MixedPrecision.Linear32(decoder_pred, decoder_norm.forward(x)[.., 1..], MixedPrecision);
    }

    public void Initialize(Generator generator)
    {
        WeightInit.XavierUniform(decoder_embed.weight!, generator);
        WeightInit.Zero(decoder_embed.bias);
        WeightInit.Normal(mask_token, 0.02, generator);
        foreach (var block in decoder_blocks)
        {
            block.Initialize(generator);
        }

        WeightInit.XavierUniform(decoder_pred.weight!, generator);
        WeightInit.Zero(decoder_pred.bias);
    }
}
