using System.Globalization;
using Microsoft.ML.BootMae.Training;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Settings of a fine-tuning run (spec §6, BootMAE run_class_finetuning) or, with <see cref="FreezeEncoder"/>, a linear
/// probe (MAE main_linprobe), carried by <see cref="BootMaeImageClassificationTrainer"/> as
/// <see cref="BootMaeImageClassificationTrainer.Options.Training"/>. Every default and every check of a fine-tuning setting
/// lives here; the engine reads these properties directly. Defaults suit short CPU runs.
/// </summary>
/// <remarks>
/// Grouped by what they control: length, optimizer and schedule, regularisation, what trains, data, run, early stopping
/// and best model, checkpoints. A new setting is a property here (with its default and its line in <see cref="Validate"/>),
/// read where it is used; the ML.NET trainer reaches it through <see cref="BootMaeImageClassificationTrainer.Options.Training"/>.
/// </remarks>
public sealed class FineTuneSettings
{
    // Compile-time defaults the catalog's optional parameters need; the other defaults are the initialisers below.
    internal const int DefaultMaxEpochs = 20;
    internal const int DefaultBatchSize = 32;

    // ---- Length of the run ----

    /// <summary>Passes over the training set. Default 20, as the ML.NET trainer's.</summary>
    public int MaxEpochs { get; set; } = DefaultMaxEpochs;

    /// <summary>Images per optimizer step. Default 32.</summary>
    public int BatchSize { get; set; } = DefaultBatchSize;

    /// <summary>Upper bound on optimizer steps (the schedule spans the smaller of this and MaxEpochs × steps per epoch). Default null: no cap.</summary>
    public long? MaxSteps { get; set; }

    // ---- Optimizer and learning-rate schedule ----

    /// <summary>Absolute peak learning rate (no batch scaling; the paper uses 5e-3 at batch 2048). Default 1e-3.</summary>
    public double LearningRate { get; set; } = 1e-3;

    /// <summary>Learning rate at the last step of the cosine. Default 1e-6.</summary>
    public double MinLearningRate { get; set; } = 1e-6;

    /// <summary>Fraction of the run spent in linear warmup from 0. Default 0.1.</summary>
    public double WarmupFraction { get; set; } = 0.1;

    /// <summary>
    /// Share of the run's steps in which only the head (<c>fc_norm</c> and the Linear) trains while the encoder stays
    /// fixed, before everything trains (linear probe, then fine-tune: LP-FT, Kumar et al. 2022). The encoder gets no
    /// gradient and no weight decay in that phase, and its optimizer state starts when it starts training. Ignored by a
    /// linear probe. Default <c>null</c>: chosen by <see cref="AutoHeadWarmupFraction"/> from the labelled images per
    /// class; the ML.NET trainer uses 0 (everything trains from the first step) when it starts from a random encoder
    /// (no <c>Encoder</c> given).
    /// </summary>
    public double? HeadWarmupFraction { get; set; }

    /// <summary>The head warm-up of a run on <paramref name="labelledImages"/> images of <paramref name="classes"/> classes:
    /// <see cref="HeadWarmupFraction"/>, or <see cref="AutoHeadWarmupFraction"/>.</summary>
    internal double HeadWarmupFractionFor(long labelledImages, int classes) => HeadWarmupFraction ?? AutoHeadWarmupFraction(labelledImages, classes);

    /// <summary>
    /// The head warm-up chosen for fine-tuning a pretrained encoder on <paramref name="labelledImages"/> images of
    /// <paramref name="classes"/> classes: 0.3 with at most 20 images per class, else 0. Measured on Fashion-MNIST after
    /// 10 minutes of pretraining (docs/results.md, "Head warm-up"): with 10 labels per class 0.3 was the best of 0, 0.1,
    /// 0.3 and 0.5 on held-out images and added 2.8 points on the test set; with 100 per class it cost 1.1 points.
    /// Between 10 and 100 per class it is untested. A random encoder loses 4–10 points with it: do not warm up its head.
    /// </summary>
    public static double AutoHeadWarmupFraction(long labelledImages, int classes) =>
        classes > 0 && labelledImages > 0 && labelledImages <= AutoHeadWarmupMaxImagesPerClass * (long)classes ? 0.3 : 0.0;

    // The most labelled images per class that still get the automatic head warm-up (10 measured helping, 100 hurting).
    private const int AutoHeadWarmupMaxImagesPerClass = 20;

    /// <summary>AdamW weight decay on matrices (biases, norms, cls_token, pos_embed get 0). Default 0.05.</summary>
    public double WeightDecay { get; set; } = 0.05;

    /// <summary>
    /// Layer-wise lr decay: head and fc_norm ×1, block k × ld^(L−k), patch embed and cls × ld^(L+1). Default <c>null</c>:
    /// chosen for the starting encoder by <see cref="AutoLayerDecay"/> (none for 4 blocks or fewer, the official 0.65 from
    /// 12 on); the ML.NET trainer uses none (1) when it starts from a random encoder (no <c>Encoder</c> given).
    /// </summary>
    public double? LayerDecay { get; set; }

    /// <summary>The layer decay of a run whose encoder has <paramref name="depth"/> blocks: <see cref="LayerDecay"/>, or <see cref="AutoLayerDecay"/>.</summary>
    internal double LayerDecayFor(int depth) => LayerDecay ?? AutoLayerDecay(depth);

    /// <summary>
    /// The layer decay chosen for an encoder of <paramref name="depth"/> blocks: the official 0.65 for 12 blocks or more,
    /// none (1.0) for shallow encoders. A 4-block encoder after minutes of pretraining lost 3–5 points with 0.65: its
    /// lower blocks are not yet good enough to be kept nearly fixed. In between, the decay rises linearly.
    /// </summary>
    public static double AutoLayerDecay(int depth) => depth >= 12 ? 0.65 : depth <= 4 ? 1.0 : 1.0 - (0.35 * (depth - 4) / 8.0);

    // ---- Regularisation ----

    // 0, not the official 0.1 (ViT-B, 100 epochs): at 4 blocks and a few hundred steps 0.1 cost the from-scratch
    // run 4 points and the pretrained one nothing (docs/results.md, "Choosing the fine-tuning recipe").
    /// <summary>Stochastic depth of the last block (rising linearly from 0 at block 0). Fine-tuning only. Default 0 (the paper: 0.1 for ViT-B).</summary>
    public double DropPathRate { get; set; } = 0.0;

    /// <summary>Label smoothing ε of the soft-target cross-entropy. Default 0.1.</summary>
    public double LabelSmoothing { get; set; } = 0.1;

    /// <summary>Mixup Beta(α, α); 0 turns it off. Default 0 (the paper uses 0.8).</summary>
    public double MixupAlpha { get; set; }

    /// <summary>CutMix Beta(α, α); 0 turns it off. With mixup also on, each batch picks one of the two at random. Default 0 (the paper uses 1.0).</summary>
    public double CutmixAlpha { get; set; }

    // ---- What trains ----

    /// <summary>
    /// Linear probe: the encoder stays frozen (eval mode, no gradients), features are the mean patch token of
    /// <see cref="SourceBlock"/> → frozen unit LN → BatchNorm1d(affine: false, eps 1e-6) → Linear (trunc-normal std 0.01),
    /// and only the Linear trains. The optimizer is the same AdamW (β 0.9/0.999) instead of the paper's LARS at batch 16384,
    /// which needs huge batches to work. Default false.
    /// </summary>
    public bool FreezeEncoder { get; set; }

    /// <summary>0-based block whose output is pooled; blocks after it are unused. Null means the last block. Default null.</summary>
    public int? SourceBlock { get; set; }

    // ---- Data ----

    /// <summary>
    /// Random resized crop (ratio 3/4–4/3, bilinear; area 0.2–1, or 0.5–1 for images under 64 pixels, as the ML.NET
    /// layer crops while decoding) and horizontal flip of the training batches on the device. Default false, unlike
    /// <see cref="BootMaeTrainingOptionsBase.Augment"/> (true): the ML.NET trainer, this engine's only product caller,
    /// always passes false and augments while decoding instead, so the engine's default only matters to direct callers
    /// (tests, benchmarks), which opt in.
    /// </summary>
    public bool Augment { get; set; }

    // ---- Run: seed, device, threads, reports ----

    /// <summary>Seeds the head initialisation, drop path, augmentation and mixup. Same seed and data → bit-identical weights on the CPU.</summary>
    public int Seed { get; set; }

    /// <summary>Where to train. Default <see cref="BootMaeDevice.Auto"/>.</summary>
    public BootMaeDevice Device { get; set; } = BootMaeDevice.Auto;

    /// <summary><see cref="BootMaePrecision.BFloat16Mixed"/>: mixed-precision training where bf16 is fast; anything else trains in fp32. Default Float32.</summary>
    public BootMaePrecision Precision { get; set; } = BootMaePrecision.Float32;

    /// <summary>With <see cref="BootMaeDevice.Cuda"/> and no usable GPU, train on the CPU instead of failing. Default true.</summary>
    public bool FallbackToCpu { get; set; } = true;

    /// <summary>Report training metrics every N steps (0: only at epoch ends). Default 50.</summary>
    public int LogEveryNSteps { get; set; } = BootMaePretrainerSettings.DefaultLogEveryNSteps;

    /// <summary>Torch intra-op threads (process-wide); null (default) leaves libtorch's choice.</summary>
    public int? NumberOfThreads { get; set; }

    // ---- Early stopping and best model ----

    /// <summary>Stop after this many epochs without improvement of the monitored loss (validation loss, or the
    /// training loss without a validation set). Null: never stop early.</summary>
    public int? EarlyStoppingPatience { get; set; }

    /// <summary>The smallest decrease of the monitored loss that counts as an improvement. Default 0.</summary>
    public double EarlyStoppingMinDelta { get; set; } = 0.0;

    /// <summary>Return the weights of the epoch with the lowest monitored loss rather than the last. Default true.</summary>
    public bool ReturnBestModel { get; set; } = true;

    /// <summary>On cancellation, return the model trained so far (the best epoch's with <see cref="ReturnBestModel"/>)
    /// instead of throwing <see cref="OperationCanceledException"/>. Default false.</summary>
    public bool ReturnModelOnCancellation { get; set; }

    // ---- Checkpoints ----

    /// <summary>Folder for checkpoints (classifier, optimizer, position, early-stopping state and best weights). Default null: none.</summary>
    public string? CheckpointDirectory { get; set; }

    /// <summary>Checkpoint every this many steps; null (default) = at the end of every epoch (after its validation).</summary>
    public long? CheckpointEveryNSteps { get; set; }

    /// <summary>Checkpoints kept (older ones are deleted). Default 2.</summary>
    public int CheckpointsToKeep { get; set; } = 2;

    /// <summary>Continue from the newest valid checkpoint in <see cref="CheckpointDirectory"/> when there is one; it must
    /// match the architecture, class count and run-shaping settings. Default false.</summary>
    public bool ResumeFromCheckpoint { get; set; }

    /// <summary>Test seam: called after every optimizer step with the groups as the step ran them. Null in every product path.</summary>
    internal Action<FineTuneStepTrace>? AfterStep { get; init; }

    /// <summary>
    /// Checks every setting and throws <see cref="ArgumentException"/> whose <see cref="ArgumentException.ParamName"/> and
    /// message name the first bad one, its value and what it must be. The only check of these settings: the engine and the
    /// ML.NET trainer both call it.
    /// </summary>
    /// <param name="architecture">The encoder's shape, to check <see cref="SourceBlock"/> against its depth; null checks it is not negative only.</param>
    /// <exception cref="ArgumentException">A setting is out of its range or contradicts another.</exception>
    public void Validate(BootMaeArchitecture? architecture = null)
    {
        static void Require(bool ok, string name, object? value, string rule) => BootMaePretrainerSettings.Require(ok, name, value, rule);

        Require(MaxEpochs >= 1, nameof(MaxEpochs), MaxEpochs, "must be at least 1");
        Require(MaxSteps is null or >= 1, nameof(MaxSteps), MaxSteps, "must be at least 1, or null for no cap");
        Require(BatchSize >= 1, nameof(BatchSize), BatchSize, "must be at least 1");
        Require(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), LearningRate, "must be a positive number");
        Require(MinLearningRate >= 0 && MinLearningRate <= LearningRate, nameof(MinLearningRate), MinLearningRate, "must be in [0, LearningRate]");
        Require(WarmupFraction is >= 0 and <= 1, nameof(WarmupFraction), WarmupFraction, "must be in [0, 1]");
        Require(HeadWarmupFraction is null or (>= 0 and < 1), nameof(HeadWarmupFraction), HeadWarmupFraction, "must be in [0, 1) (0: the encoder trains from the first step), or null to choose it from the labels per class");
        Require(WeightDecay >= 0, nameof(WeightDecay), WeightDecay, "must not be negative");
        Require(LayerDecay is null or (> 0 and <= 1), nameof(LayerDecay), LayerDecay, "must be in (0, 1], or null to choose it for the encoder");
        Require(DropPathRate is >= 0 and < 1, nameof(DropPathRate), DropPathRate, "must be in [0, 1)");
        Require(LabelSmoothing is >= 0 and < 1, nameof(LabelSmoothing), LabelSmoothing, "must be in [0, 1)");
        Require(MixupAlpha >= 0, nameof(MixupAlpha), MixupAlpha, "must not be negative");
        Require(CutmixAlpha >= 0, nameof(CutmixAlpha), CutmixAlpha, "must not be negative");
        Require(SourceBlock is null || (SourceBlock >= 0 && (architecture is null || SourceBlock < architecture.Depth)), nameof(SourceBlock), SourceBlock,
            architecture is null ? "must be a 0-based encoder block" : $"must be a 0-based encoder block in [0, {architecture.Depth - 1}] for this {architecture.Depth}-block encoder");
        Require(NumberOfThreads is null or > 0, nameof(NumberOfThreads), NumberOfThreads, "must be positive, or null for libtorch's choice");
        Require(LogEveryNSteps >= 0, nameof(LogEveryNSteps), LogEveryNSteps, "must not be negative (0 reports at epoch ends only)");
        Require(EarlyStoppingPatience is null or >= 1, nameof(EarlyStoppingPatience), EarlyStoppingPatience, "must be at least 1, or null for no early stopping");
        Require(EarlyStoppingMinDelta >= 0, nameof(EarlyStoppingMinDelta), EarlyStoppingMinDelta, "must not be negative");
        Require(CheckpointEveryNSteps is null or >= 1, nameof(CheckpointEveryNSteps), CheckpointEveryNSteps, "must be at least 1, or null for every epoch end");
        Require(CheckpointsToKeep >= 1, nameof(CheckpointsToKeep), CheckpointsToKeep, "must be at least 1");
        Require(!ResumeFromCheckpoint || !string.IsNullOrEmpty(CheckpointDirectory), nameof(ResumeFromCheckpoint), ResumeFromCheckpoint, "needs a CheckpointDirectory");
    }

    /// <summary>A shallow copy (what the ML.NET trainer completes for one run).</summary>
    internal FineTuneSettings Clone() => (FineTuneSettings)MemberwiseClone();

    // What must not change between a checkpoint and its resume (the architecture is checked on its own). The head
    // warm-up joins the list only when it is on, so checkpoints written before it existed still resume.
    internal string Fingerprint(int numClasses, bool linearProbe, int sourceBlock, long totalSteps, int depth, bool hasValidation, long headWarmupSteps) =>
        string.Join('|', new object?[]
        {
            numClasses, linearProbe, sourceBlock, BatchSize, MaxEpochs, totalSteps, Seed,
            LearningRate, MinLearningRate, WarmupFraction, WeightDecay, LayerDecayFor(depth), DropPathRate, LabelSmoothing,
            MixupAlpha, CutmixAlpha, Augment, EarlyStoppingPatience, EarlyStoppingMinDelta, ReturnBestModel, hasValidation,
        }.Concat(headWarmupSteps > 0 ? new object?[] { "head-warmup", headWarmupSteps } : Array.Empty<object?>())
            .Select(o => Convert.ToString(o, System.Globalization.CultureInfo.InvariantCulture)));
}

/// <summary>One fine-tuning step as the loop ran it: the scheduled learning rate, and each AdamW group's parameters
/// (with their layer-decay multiplier) beside the optimizer group whose <c>LearningRate</c> the step used.</summary>
internal readonly record struct FineTuneStepTrace(long Step, double ScheduledLearningRate, IReadOnlyList<FineTuneParameterGroup> Groups,
    IReadOnlyList<OwnedAdamW.ParamGroup> OptimizerGroups);
