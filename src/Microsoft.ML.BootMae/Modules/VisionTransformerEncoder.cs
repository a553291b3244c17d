using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// The ViT trunk shared by the student and the teacher (spec §2.1). The student path keeps cls + visible tokens only;
// the teacher path runs cls + all (or a chosen subset of) patches and returns the last block's raw output.
internal sealed class VisionTransformerEncoder : nn.Module<Tensor, Tensor>
{
    private readonly PatchEmbed patch_embed;
    private readonly Parameter cls_token;
    private readonly Parameter pos_embed;
    private readonly ModuleList<EncoderBlock> blocks;
    private readonly LayerNorm norm;

    public VisionTransformerEncoder(BootMaeArchitecture architecture) : base(nameof(VisionTransformerEncoder))
    {
        Architecture = architecture;
        int d = architecture.EmbedDim;
        patch_embed = new PatchEmbed(architecture.Channels, d, architecture.PatchSize);
        cls_token = new Parameter(zeros(1, 1, d));
        pos_embed = SinCosPositionEmbedding.CreateParameter(architecture.GridSize, d);
        blocks = new ModuleList<EncoderBlock>(
            Enumerable.Range(0, architecture.Depth).Select(_ => new EncoderBlock(d, architecture.Heads, architecture.MlpRatio)).ToArray());
        norm = nn.LayerNorm(d, eps: 1e-6);
        RegisterComponents();
    }

    public BootMaeArchitecture Architecture { get; }

    // Elements of this module's state_dict for an architecture, computed without building anything, in double so a
    // crafted architecture cannot overflow. Loaders compare it with a file's payload before allocating (a test pins it
    // to the real state_dict).
    public static double StateElementCount(BootMaeArchitecture a)
    {
        double d = a.EmbedDim, c = a.Channels, p = a.PatchSize, grid = (double)a.ImageSize / a.PatchSize;
        double hidden = Math.Floor(d * a.MlpRatio), inner = Math.Floor(d / a.Heads) * a.Heads;
        double block = (2 * d) + (3 * inner * d) + (2 * inner) + (inner * d) + d + (2 * d) + (hidden * d) + hidden + (d * hidden) + d;
        return (d * c * p * p) + d + d + ((1 + (grid * grid)) * d) + (a.Depth * block) + (2 * d);
    }

    // The frozen 1×(1+N)×D table; the feature predictor gives it to its mask tokens.
    public Parameter PositionEmbedding => pos_embed;

    public int Depth => blocks.Count;

    public IReadOnlyList<EncoderBlock> Blocks => blocks.ToList();

    // Student path. idsKeep B×N_v (patch indices, 0-based) selects the visible tokens; mask tokens never enter.
    // Returns the final-LN output (B×(1+N_v)×D) and the raw pre-LN outputs of the two injection blocks.
    public EncoderOutput ForwardVisible(Tensor images, Tensor idsKeep, int shallowBlock, int deepBlock)
    {
        var x = EmbedSubset(images, idsKeep);
        Tensor? shallow = null;
        Tensor? deep = null;
        for (int i = 0; i < blocks.Count; i++)
        {
            x = blocks[i].forward(x);
            if (i == shallowBlock)
            {
                shallow = x;
            }

            if (i == deepBlock)
            {
                deep = x;
            }
        }

        return new EncoderOutput(norm.forward(x), shallow!, deep!);
    }

    // Teacher path over the full image: cls + all N patches → all blocks; returns patch tokens B×N×D, no final LN.
    public override Tensor forward(Tensor images)
    {
        var x = patch_embed.forward(images).add(pos_embed[.., 1..], TorchScalars.One);
        var cls = cls_token.add(pos_embed[.., ..1], TorchScalars.One).expand(x.shape[0], -1, -1);
        x = cat(new[] { cls, x }, 1);
        return RunBlocks(x)[.., 1..];
    }

    // Teacher path over cls + a subset of patches (paper Table 5); returns B×S×D in the order of ids, no final LN.
    public Tensor ForwardSubset(Tensor images, Tensor ids) => RunBlocks(EmbedSubset(images, ids))[.., 1..];

    // Inference path: cls + all N patches through blocks 0..lastBlock, then the final LN: B×(1+N)×D.
    // Applying the pretrained LN to an earlier block (a truncated encoder, as the official linear probe uses)
    // keeps features on the scale the rest of the network saw in training.
    public Tensor ForwardTokens(Tensor images, int lastBlock)
    {
        var x = patch_embed.forward(images).add(pos_embed[.., 1..], TorchScalars.One);
        var cls = cls_token.add(pos_embed[.., ..1], TorchScalars.One).expand(x.shape[0], -1, -1);
        x = cat(new[] { cls, x }, 1);
        for (int i = 0; i <= lastBlock; i++)
        {
            x = blocks[i].forward(x);
        }

        return norm.forward(x);
    }

    public void Initialize(Generator generator)
    {
        patch_embed.Initialize(generator);
        WeightInit.Normal(cls_token, 1e-6, generator);
        foreach (var block in blocks)
        {
            block.Initialize(generator);
        }
    }

    // Fine-tuning path: cls + all N patches through blocks 0..lastBlock, raw (the fine-tuned network replaces the
    // final LN by identity): B×(1+N)×D.
    public Tensor ForwardRaw(Tensor images, int lastBlock)
    {
        var x = patch_embed.forward(images).add(pos_embed[.., 1..], TorchScalars.One);
        var cls = cls_token.add(pos_embed[.., ..1], TorchScalars.One).expand(x.shape[0], -1, -1);
        x = cat(new[] { cls, x }, 1);
        for (int i = 0; i <= lastBlock; i++)
        {
            x = blocks[i].forward(x);
        }

        return x;
    }

    // Stochastic depth rising linearly from 0 at block 0 to maxRate at the last block (timm); 0 turns it off.
    public void SetDropPath(double maxRate, Generator? generator)
    {
        for (int i = 0; i < blocks.Count; i++)
        {
            blocks[i].DropPath.Rate = blocks.Count == 1 ? maxRate : maxRate * i / (blocks.Count - 1);
            blocks[i].DropPath.Generator = generator;
        }
    }

    private Tensor RunBlocks(Tensor x)
    {
        foreach (var block in blocks)
        {
            x = block.forward(x);
        }

        return x;
    }

    // cls (its PE row is zero) followed by the patches listed in ids, each with its own PE.
    public Tensor EmbedSubset(Tensor images, Tensor ids)
    {
        var x = patch_embed.forward(images).add(pos_embed[.., 1..], TorchScalars.One);
        long d = x.shape[2];
        var kept = x.gather(1, ids.unsqueeze(-1).expand(-1, -1, d));
        var cls = cls_token.add(pos_embed[.., ..1], TorchScalars.One).expand(x.shape[0], -1, -1);
        return cat(new[] { cls, kept }, 1);
    }
}

// Student encoder output: Latent is after the final LN; Shallow and Deep are raw block outputs (before the final LN).
internal readonly record struct EncoderOutput(Tensor Latent, Tensor Shallow, Tensor Deep);
