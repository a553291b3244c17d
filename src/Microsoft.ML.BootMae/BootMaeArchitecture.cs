namespace Microsoft.ML.BootMae;

/// <summary>
/// The shape of a BootMAE network (encoder and both decoders) and the input normalisation its weights expect, and
/// nothing else. Training settings (epochs, learning rates, masking, feature-loss weight, EMA, precision) live in the
/// options of the trainers.
/// </summary>
/// <remarks>
/// Customise a preset with a <c>with</c> expression, e.g. <c>BootMaeArchitecture.VitTiny16 with { ImageSize = 32, PatchSize = 4 }</c>.
/// Block indices are 0-based.
/// </remarks>
public sealed record BootMaeArchitecture
{
    /// <summary>Side of the square input image in pixels. Default 224.</summary>
    public int ImageSize { get; init; } = 224;

    /// <summary>Side of a square patch in pixels; must divide <see cref="ImageSize"/>. Default 16.</summary>
    public int PatchSize { get; init; } = 16;

    /// <summary>Number of image channels: 1 (grey) or 3 (RGB). Default 3.</summary>
    public int Channels { get; init; } = 3;

    /// <summary>Encoder width D; must be divisible by 4 (sin-cos position table) and by <see cref="Heads"/>. Default 768.</summary>
    public int EmbedDim { get; init; } = 768;

    /// <summary>Number of encoder blocks. Default 12.</summary>
    public int Depth { get; init; } = 12;

    /// <summary>Number of encoder attention heads. Default 12.</summary>
    public int Heads { get; init; } = 12;

    /// <summary>
    /// How [0, 1] pixels are normalised before the patch embedding, in every path (featurize, fine-tune, pretraining,
    /// ONNX). Default <see cref="BootMaeNormalization.BootMae"/> (mean = std = 0.5, BootMAE's pretraining); imported MAE
    /// weights need <see cref="BootMaeNormalization.ImageNet"/>. Files written before this member existed read as the default.
    /// </summary>
    public BootMaeNormalization Normalization { get; init; } = BootMaeNormalization.BootMae;

    /// <summary>Hidden width of every MLP as a multiple of its block width. Default 4.</summary>
    public double MlpRatio { get; init; } = 4.0;

    /// <summary>Width of the pixel regressor (and of the MAE-mode decoder); must be divisible by 4. Default 512.</summary>
    public int RegressorDim { get; init; } = 512;

    /// <summary>Attention heads of the pixel regressor. Default 12 (the official code uses the encoder's count).</summary>
    public int RegressorHeads { get; init; } = 12;

    /// <summary>Attention heads of the feature predictor (whose width is always <see cref="EmbedDim"/>). Default 12.</summary>
    public int PredictorHeads { get; init; } = 12;

    /// <summary>Number of blocks in each BootMAE decoder. Default 2.</summary>
    public int DecoderDepth { get; init; } = 2;

    /// <summary>Encoder block whose raw output feeds the pixel regressor's cross-attention. Default 0.</summary>
    public int ShallowBlock { get; init; }

    /// <summary>Encoder block whose raw output feeds the feature predictor's cross-attention; <c>null</c> means the last block.</summary>
    public int? DeepBlock { get; init; }

    /// <summary>Patches per side of the grid: <see cref="ImageSize"/> / <see cref="PatchSize"/>.</summary>
    public int GridSize => ImageSize / PatchSize;

    /// <summary>Number of patches N.</summary>
    public int NumPatches => GridSize * GridSize;

    /// <summary>The deep injection block with the default applied.</summary>
    public int DeepBlockIndex => DeepBlock ?? Depth - 1;

    /// <summary>
    /// The members an encoder's weights fix (everything but the decoders'): compare these, not whole architectures, to
    /// tell whether an encoder can serve a network. Not serialised (it is derived).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public BootMaeEncoderShape EncoderShape => new(this);

    /// <summary>ViT-Tiny/16 at 224² (D 192, depth 12, 3 heads) with the paper's decoders (regressor 512 wide).</summary>
    public static BootMaeArchitecture VitTiny16 { get; } = new()
    {
        EmbedDim = 192, Depth = 12, Heads = 3, RegressorDim = 512, RegressorHeads = 3, PredictorHeads = 3,
    };

    /// <summary>ViT-Small/16 at 224² (D 384, depth 12, 6 heads) with the paper's decoders.</summary>
    public static BootMaeArchitecture VitSmall16 { get; } = new()
    {
        EmbedDim = 384, Depth = 12, Heads = 6, RegressorDim = 512, RegressorHeads = 6, PredictorHeads = 6,
    };

    /// <summary>ViT-Base/16 at 224² (D 768, depth 12, 12 heads), the paper's main model.</summary>
    public static BootMaeArchitecture VitBase16 { get; } = new();

    /// <summary>ViT-Large/16 at 224² (D 1024, depth 24, 16 heads).</summary>
    public static BootMaeArchitecture VitLarge16 { get; } = new()
    {
        EmbedDim = 1024, Depth = 24, Heads = 16, RegressorDim = 512, RegressorHeads = 16, PredictorHeads = 16,
    };

    /// <summary>28×28 grey images (Fashion-MNIST), patch 4: D 192, depth 12, 3 heads; regressor 128 wide with 4 heads; injection from blocks 0 and 11 (the last).</summary>
    public static BootMaeArchitecture Tiny28 { get; } = new()
    {
        ImageSize = 28, PatchSize = 4, Channels = 1, EmbedDim = 192, Depth = 12, Heads = 3,
        RegressorDim = 128, RegressorHeads = 4, PredictorHeads = 3, DecoderDepth = 2, ShallowBlock = 0,
    };

    /// <summary>
    /// 28×28 grey images, patch 4 (a 7×7 grid): <see cref="Tiny28"/> cut to D 128, depth 4, 4 heads; regressor 64 wide
    /// with 4 heads; one block in each decoder (<see cref="DecoderDepth"/> 1, not the paper's 2: a step costs about 0.7 of
    /// depth 2's here, and at equal pretraining time it probed and fine-tuned as well or better, docs/results.md
    /// "Decoder depth"); injection from blocks 0 and 3 (the last). The samples' default shape, and the one behind every
    /// result in docs/results.md (those before "Decoder depth" with <c>DecoderDepth = 2</c>).
    /// </summary>
    public static BootMaeArchitecture Small28 { get; } = Tiny28 with
    {
        EmbedDim = 128, Depth = 4, Heads = 4, RegressorDim = 64, RegressorHeads = 4, PredictorHeads = 4, DecoderDepth = 1,
    };

    /// <summary>32×32 RGB images (CIFAR-sized), patch 4: D 384, depth 12, 6 heads; regressor 256 wide with 8 heads.</summary>
    public static BootMaeArchitecture Small32 { get; } = new()
    {
        ImageSize = 32, PatchSize = 4, Channels = 3, EmbedDim = 384, Depth = 12, Heads = 6,
        RegressorDim = 256, RegressorHeads = 8, PredictorHeads = 6, DecoderDepth = 2,
    };

    /// <summary>Checks that the shape is consistent and throws <see cref="ArgumentException"/> naming the bad member.</summary>
    public void Validate()
    {
        static void Require(bool ok, string member, string what)
        {
            if (!ok)
            {
                throw new ArgumentException($"BootMaeArchitecture.{member}: {what}");
            }
        }

        Require(ImageSize > 0 && PatchSize > 0, nameof(ImageSize), "ImageSize and PatchSize must be positive.");
        Require(ImageSize % PatchSize == 0, nameof(PatchSize), $"PatchSize {PatchSize} must divide ImageSize {ImageSize}.");
        Require(Channels is 1 or 3, nameof(Channels), $"Channels must be 1 or 3, not {Channels}.");
        Require(EmbedDim > 0 && EmbedDim % 4 == 0, nameof(EmbedDim), $"EmbedDim {EmbedDim} must be a positive multiple of 4 (2-D sin-cos table).");
        Require(Heads > 0 && EmbedDim % Heads == 0, nameof(Heads), $"Heads {Heads} must divide EmbedDim {EmbedDim}.");
        Require(Depth > 0, nameof(Depth), "Depth must be positive.");
        Require(Normalization is not null, nameof(Normalization), "Normalization must not be null.");
        Normalization!.Validate(Channels);
        Require(MlpRatio > 0, nameof(MlpRatio), "MlpRatio must be positive.");
        Require(RegressorDim > 0 && RegressorDim % 4 == 0, nameof(RegressorDim), $"RegressorDim {RegressorDim} must be a positive multiple of 4.");
        Require(RegressorHeads > 0 && RegressorDim / RegressorHeads > 0, nameof(RegressorHeads), "RegressorHeads must be positive and at most RegressorDim.");
        Require(PredictorHeads > 0 && EmbedDim / PredictorHeads > 0, nameof(PredictorHeads), "PredictorHeads must be positive and at most EmbedDim.");
        Require(DecoderDepth > 0, nameof(DecoderDepth), "DecoderDepth must be positive.");
        Require(ShallowBlock >= 0 && ShallowBlock < Depth, nameof(ShallowBlock), $"ShallowBlock {ShallowBlock} must be in [0, {Depth - 1}].");
        Require(DeepBlockIndex >= 0 && DeepBlockIndex < Depth, nameof(DeepBlock), $"DeepBlock {DeepBlockIndex} must be in [0, {Depth - 1}].");
    }
}
