using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// The student: encoder + pixel regressor + feature predictor (BootMAE mode), or encoder + MaeDecoder (MAE mode).
// Child names are encoder / regressor / predictor / decoder; dropping that first key segment gives the reference's flat
// keys (see ToReferenceKey). The teacher is a separate MomentumTeacher, never a child, so it
// can never reach the optimizer.
internal sealed class BootMaeNetwork : nn.Module
{
    private readonly VisionTransformerEncoder encoder;
    private readonly PixelRegressor? regressor;
    private readonly FeaturePredictor? predictor;
    private readonly MaeDecoder? decoder;

    public BootMaeNetwork(BootMaeArchitecture architecture, BootMaePretrainerSettings settings) : base(nameof(BootMaeNetwork))
    {
        architecture.Validate();
        settings.Validate();
        Architecture = architecture;
        Settings = settings;
        encoder = new VisionTransformerEncoder(architecture);
        if (settings.Mode == BootMaeMode.Mae)
        {
            decoder = new MaeDecoder(architecture, settings.MaeDecoderDepth);
        }
        else
        {
            // Both decoders always exist in BootMAE mode (even if one loss is off) so checkpoints keep one layout.
            regressor = new PixelRegressor(architecture, settings.InjectRegressor);
            predictor = new FeaturePredictor(architecture, settings.InjectPredictor);
        }

        RegisterComponents();
    }

    public BootMaeArchitecture Architecture { get; }

    // The run's settings; the losses, masks and previews read their switches from here.
    public BootMaePretrainerSettings Settings { get; }

    public VisionTransformerEncoder Encoder => encoder;

    public PixelRegressor? Regressor => regressor;

    public FeaturePredictor? Predictor => predictor;

    public MaeDecoder? Decoder => decoder;

    // Builds the student with the spec §2.6 initialisation drawn from a generator seeded with seed.
    public static BootMaeNetwork Create(BootMaeArchitecture architecture, BootMaePretrainerSettings settings, int seed)
    {
        var network = new BootMaeNetwork(architecture, settings);
        var generator = new Generator((ulong)seed);
        try
        {
            network.encoder.Initialize(generator);
            network.regressor?.Initialize(generator);
            network.predictor?.Initialize(generator);
            network.decoder?.Initialize(generator);
        }
        finally
        {
            generator.Dispose();
        }

        return network;
    }

    // One student forward. images B×C×H×W; the result's tensors belong to the caller's dispose scope.
    public BootMaeForward Forward(Tensor images, MaskBatch masks)
    {
        var a = Architecture;
        var enc = encoder.ForwardVisible(images, masks.IdsKeep, a.ShallowBlock, a.DeepBlockIndex);
        if (decoder is not null)
        {
            return new BootMaeForward(enc, decoder.forward(enc.Latent, masks), null);
        }

        var pixels = regressor!.forward(enc.Latent, Settings.InjectRegressor ? enc.Shallow : null, masks);
        var features = predictor!.forward(enc.Latent, Settings.InjectPredictor ? enc.Deep : null, masks, encoder.PositionEmbedding);
        return new BootMaeForward(enc, pixels, features);
    }

    // Maps a key of this module's state_dict to the reference's key (encoder.blocks.0.attn.qkv.weight → blocks.0.attn.qkv.weight).
    public static string ToReferenceKey(string key)
    {
        int dot = key.IndexOf('.', StringComparison.Ordinal);
        return dot < 0 ? key : key[(dot + 1)..];
    }

    // state_dict under the reference's flat key names.
    public Dictionary<string, Tensor> ReferenceStateDict()
        => state_dict().ToDictionary(kv => ToReferenceKey(kv.Key), kv => kv.Value);

    // Copies tensors given under reference key names into this module (no_grad, in place, with dtype conversion).
    // Returns the reference keys of this module that were absent from weights, and the given keys this module lacks.
    public (IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected) LoadReferenceStateDict(IReadOnlyDictionary<string, Tensor> weights, bool strict = true)
    {
        var own = ReferenceStateDict();
        var missing = own.Keys.Where(k => !weights.ContainsKey(k)).ToList();
        var unexpected = weights.Keys.Where(k => !own.ContainsKey(k)).ToList();
        if (strict && (missing.Count > 0 || unexpected.Count > 0))
        {
            throw new ArgumentException(
                $"State dict mismatch. Missing: [{string.Join(", ", missing)}]. Unexpected: [{string.Join(", ", unexpected)}].");
        }

        using var _ = no_grad();
        foreach (var (key, target) in own)
        {
            if (weights.TryGetValue(key, out var source))
            {
                if (!source.shape.SequenceEqual(target.shape))
                {
                    throw new ArgumentException(
                        $"Shape mismatch for {key}: expected [{string.Join(", ", target.shape)}], got [{string.Join(", ", source.shape)}].");
                }

                target.copy_(source);
            }
        }

        return (missing, unexpected);
    }
}

// Student outputs. Pixels: B×C×H×W (BootMAE) or B×N×P²C in MAE patchify order (MAE mode). Features: B×N×D or null.
internal readonly record struct BootMaeForward(EncoderOutput Encoder, Tensor Pixels, Tensor? Features);
