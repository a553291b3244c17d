namespace Microsoft.ML.BootMae;

/// <summary>Which network of a training checkpoint <see cref="BootMaeEncoder.FromPyTorch(string, BootMaePyTorchImportOptions?)"/> takes.</summary>
public enum BootMaeCheckpointModel
{
    /// <summary>The student: the official checkpoints' <c>model</c> entry (also <c>state_dict</c> or <c>module</c>). What the official fine-tuning starts from.</summary>
    Student,

    /// <summary>The momentum teacher: the official checkpoints' <c>model_ema</c> entry (timm's <c>ModelEma</c> weights).</summary>
    Teacher,
}

/// <summary>
/// Settings of <see cref="BootMaeEncoder.FromPyTorch(string, BootMaePyTorchImportOptions?)"/>. Every member is optional:
/// with none set, the architecture is inferred from the tensor shapes and the normalisation from the key names.
/// </summary>
public sealed record BootMaePyTorchImportOptions
{
    /// <summary>
    /// The shape the weights were trained with; <c>null</c> (the default) infers it from the tensor shapes (patch size,
    /// channels, width, depth, MLP ratio, image size from the position table) and <see cref="Heads"/>. When given, every
    /// encoder tensor must fit it, except the position table, which is resampled when <see cref="BootMaeArchitecture.ImageSize"/>
    /// differs from the file's grid.
    /// </summary>
    public BootMaeArchitecture? Architecture { get; init; }

    /// <summary>
    /// Attention heads when <see cref="Architecture"/> is inferred; the file's shapes do not record them. <c>null</c>:
    /// the ViT presets' count for widths 192, 384, 768, 1024, 1280 (3, 6, 12, 16, 16), otherwise width / 64.
    /// </summary>
    public int? Heads { get; init; }

    /// <summary>
    /// Image side to use the encoder at when <see cref="Architecture"/> is inferred; <c>null</c> keeps the file's
    /// (grid of its position table × patch size). A different size resamples the position table bicubically, as timm does.
    /// </summary>
    public int? ImageSize { get; init; }

    /// <summary>Which network of a checkpoint that holds both (official BootMAE: <c>model</c> and <c>model_ema</c>). Default <see cref="BootMaeCheckpointModel.Student"/>.</summary>
    public BootMaeCheckpointModel Model { get; init; } = BootMaeCheckpointModel.Student;

    /// <summary>
    /// The input normalisation the weights expect. <c>null</c> (the default): a non-default
    /// <see cref="BootMaeArchitecture.Normalization"/> of <see cref="Architecture"/> if given; else what an official
    /// checkpoint's <c>args</c> record (<c>imagenet_default_mean_and_std</c>, or an MAE model name); else the key names:
    /// BootMAE/BEiT names (q_bias, v_bias) → <see cref="BootMaeNormalization.BootMae"/>, MAE checkpoints (their decoder
    /// keys are present) → <see cref="BootMaeNormalization.ImageNet"/>. For any other file (timm, Hugging Face without the
    /// MAE decoder, MAE's encoder-only release) the import fails and asks for this member, since both conventions exist there.
    /// </summary>
    public BootMaeNormalization? Normalization { get; init; }

    /// <summary>Receives one line per decision (which entry was taken, naming, inferred shape, normalisation, resampling). <c>null</c>: silent.</summary>
    public Action<string>? Log { get; init; }
}
