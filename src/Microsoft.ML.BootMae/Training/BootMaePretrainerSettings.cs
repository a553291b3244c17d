using System.Globalization;
using Microsoft.ML.BootMae.Training;

namespace Microsoft.ML.BootMae;

/// <summary>Which patches are masked in pretraining.</summary>
public enum BootMaeMasking
{
    /// <summary>Block-wise masking of about 61% of the patches plus random fill to the mask ratio, with a small roll jitter (the official code).</summary>
    BlockFill,

    /// <summary>Block-wise masking only (random fill only covers what the block stage could not place).</summary>
    Block,

    /// <summary>Uniformly random patches (MAE).</summary>
    Random,
}

/// <summary>Which targets the student learns to predict.</summary>
public enum BootMaeTarget
{
    /// <summary>Normalised pixels and the momentum encoder's features (BootMAE).</summary>
    Both,

    /// <summary>Normalised pixels only.</summary>
    Pixel,

    /// <summary>The teacher's features only.</summary>
    Feature,
}

/// <summary>Where the feature target comes from.</summary>
public enum BootMaeTeacher
{
    /// <summary>A momentum (EMA) copy of the student: the bootstrapped teacher of BootMAE.</summary>
    Ema,

    /// <summary>A fixed pretrained encoder (<see cref="BootMaePretrainerSettings.TeacherEncoder"/>), never updated (paper Tables 3 and 9).</summary>
    Frozen,
}

/// <summary>
/// Settings of a pretraining run of <see cref="BootMaePretrainer"/>, and of <see cref="BootMaePretrainingEstimator"/>, which
/// carries one as <see cref="BootMaePretrainingEstimator.Options.Training"/>. Every default and every check of a pretraining
/// setting lives here; the engine reads these fields directly. Schedules are fractions of the run, so the defaults make
/// sense for a ten-minute CPU run and for a long GPU run alike. See docs/api.md for the table.
/// </summary>
/// <remarks>
/// The fields are grouped by what they control (objective, length, optimizer, masking, teacher and EMA, losses, data,
/// start, run, checkpoints), in that order. A new setting is a field here (with its default, its line in
/// <see cref="Validate"/> and, when a checkpoint made without it must not be resumed with it, its entry in the run
/// fingerprint), read where it is used; the ML.NET estimator reaches it through
/// <see cref="BootMaePretrainingEstimator.Options.Training"/> without a change.
/// </remarks>
public sealed class BootMaePretrainerSettings
{
    // Compile-time defaults the catalog's optional parameters need; the other defaults are the field initialisers below.
    internal const int DefaultMaxEpochs = 100;
    internal const int DefaultBatchSize = 64;
    internal const int DefaultLogEveryNSteps = 50;
    internal const int DefaultSeed = 1;

    // ---- What is learned (paper §3, Tables 1, 3, 9) ----

    /// <summary>BootMAE (default) or plain MAE as a baseline.</summary>
    public BootMaeMode Mode = BootMaeMode.BootMae;

    /// <summary>Targets. Default both.</summary>
    public BootMaeTarget Target = BootMaeTarget.Both;

    /// <summary>Cross-attention from the shallow block into the pixel regressor. Default true.</summary>
    public bool InjectRegressor = true;

    /// <summary>Cross-attention from the deep block into the feature predictor. Default true.</summary>
    public bool InjectPredictor = true;

    /// <summary>Blocks of the MAE-mode decoder. Default 8.</summary>
    public int MaeDecoderDepth = 8;

    // ---- Length of the run ----

    /// <summary>Passes over the data. Default 100 (the paper uses 800 on ImageNet), as the ML.NET estimator's.</summary>
    public int MaxEpochs = DefaultMaxEpochs;

    /// <summary>Stops after this many optimizer steps (schedules span the shorter of this and the epochs). Default null: no cap.</summary>
    public long? MaxSteps;

    /// <summary>Images per step. Default 64.</summary>
    public int BatchSize = DefaultBatchSize;

    // ---- Optimizer and learning-rate schedule (spec §5) ----

    /// <summary>Base learning rate, scaled by BatchSize/256 (spec §5). Default 1.5e-3, higher than the paper's 1.5e-4 because short runs need it.</summary>
    public double LearningRate = 1.5e-3;

    /// <summary>Learning rate at the last step, as a fraction of the scaled peak. Default 0.01.</summary>
    public double MinLearningRateFraction = 0.01;

    /// <summary>Share of the run spent in linear warmup. Default 0.05.</summary>
    public double WarmupFraction = 0.05;

    /// <summary>AdamW weight decay on matrices (biases, norms, cls token and position tables get none). Default 0.05.</summary>
    public double WeightDecay = 0.05;

    // ---- Masking ----

    /// <summary>Masking strategy. Default block-wise plus random fill. MAE mode always masks at random.</summary>
    public BootMaeMasking Masking = BootMaeMasking.BlockFill;

    /// <summary>Share of patches masked. Default 0.75.</summary>
    public double MaskRatio = 0.75;

    /// <summary>Largest roll jitter of the block masks; null (default) scales the official 3 to the grid, round(3·N/196): 1 on 7×7 and 8×8 grids; 0 turns it off.</summary>
    public int? MaskJitter;

    // ---- Teacher and EMA schedule (spec §7.1) ----

    /// <summary>Teacher kind. Default <see cref="BootMaeTeacher.Ema"/>.</summary>
    public BootMaeTeacher Teacher = BootMaeTeacher.Ema;

    /// <summary>The fixed teacher when <see cref="Teacher"/> is <see cref="BootMaeTeacher.Frozen"/>; must match the architecture.</summary>
    public BootMaeEncoder? TeacherEncoder;

    /// <summary>Share of the image the teacher sees (paper Table 5): 1 (default) = the full image; smaller values feed cls plus
    /// that share of patches, sampled from the masked ones, and take the feature loss on them only.</summary>
    public double TeacherFraction = 1.0;

    /// <summary>EMA momentum at the start; null (default) scales it to the run (horizon T/250 steps), but never below <see cref="EmaMomentumFloor"/>.</summary>
    public double? EmaMomentumStart;

    /// <summary>EMA momentum at the end of the first ramp; null (default) scales it (horizon T/25), never below <see cref="EmaMomentumFloor"/>.</summary>
    public double? EmaMomentumMid;

    /// <summary>EMA momentum from the end of the second ramp on; null (default) scales it (horizon T/2.5), never below <see cref="EmaMomentumFloor"/>.</summary>
    public double? EmaMomentumEnd;

    /// <summary>
    /// The lowest momentum a scaled (null) EMA momentum may take: a teacher memory of at least 1/(1 − floor) steps. Short
    /// runs scaled without a floor give m ≈ 0.5 at the start, so the teacher copies the student and its target carries
    /// no information. Explicit momenta are used as given. Default 0.996 (a memory of 250 steps); the official code uses
    /// 0.999 and up.
    /// </summary>
    public double EmaMomentumFloor = 0.996;

    /// <summary>Share of the run of the first EMA ramp. Default 0.125 (100 of 800 epochs).</summary>
    public double EmaRamp1Fraction = 0.125;

    /// <summary>Share of the run at which the second EMA ramp ends. Default 0.5 (400 of 800 epochs).</summary>
    public double EmaRamp2EndFraction = 0.5;

    /// <summary><see cref="BootMaePrecision.BFloat16"/> (default) runs the teacher in bfloat16 (fp32 master weights) where the hardware
    /// has fast bfloat16 (CUDA, or CPUs with AVX-512 BF16/AMX), and falls back to fp32 elsewhere. <see cref="BootMaePrecision.BFloat16Mixed"/>
    /// also trains the student in mixed precision there (bf16 matrix products, fp32 masters; docs/gpu.md).</summary>
    public BootMaePrecision Precision = BootMaePrecision.BFloat16;

    // ---- Losses and their targets ----

    /// <summary>Final weight λ of the feature loss. Default 1.</summary>
    public double FeatureLossWeight = 1.0;

    /// <summary>Share of the run over which λ ramps up linearly from 0. Default 0.25 (the official code).</summary>
    public double FeatureLossRampFraction = 0.25;

    /// <summary>How the teacher's features become the target. Default <see cref="BootMaeFeatureTargetNormalization.BatchStandardized"/>
    /// (the official code: <see cref="BootMaeFeatureTargetNormalization.LayerNorm"/>).</summary>
    public BootMaeFeatureTargetNormalization FeatureTargetNormalization = BootMaeFeatureTargetNormalization.BatchStandardized;

    /// <summary>
    /// ε added to each patch's pixel variance (pixels in [−1, 1]) in the normalised pixel target. The official 1e-5 turns
    /// nearly flat patches into amplified quantisation noise; a larger ε keeps their target near 0. Default 1e-5
    /// (see docs/results.md for what was measured).
    /// </summary>
    public double PixelTargetEpsilon = 1e-5;

    /// <summary>Centre-weighted loss mask (paper App. C). Default true.</summary>
    public bool WeightMask = true;

    /// <summary>Per-patch normalised pixel target. Default true.</summary>
    public bool NormPixTarget = true;

    // ---- Data ----

    /// <summary>
    /// Random resized crop (area <c>0.5–1</c> below 64 pixels, else <c>0.2–1</c>) and horizontal flip of each batch
    /// before masking, on the device. Default true. The ML.NET estimator always passes false here and applies its own
    /// <see cref="BootMaeTrainingOptionsBase.Augment"/> (same default, true) while decoding instead, with the same crop
    /// ranges: augmenting the decoded image at its own resolution, on the background reader, before it is resized to
    /// the network's size, rather than the resized batch on the device (pixel-vector columns are never augmented there).
    /// </summary>
    public bool Augment = true;

    // ---- Where the run starts ----

    /// <summary>Starts the student's encoder from these weights instead of a random initialisation. Default null.</summary>
    public BootMaeEncoder? InitialEncoder;

    /// <summary>
    /// Starts the run from a whole pretraining checkpoint in the official BootMAE layout (a <c>.pth</c> that
    /// <see cref="BootMaePretrainer.ExportOfficialCheckpoint"/> or the official <c>run_pretraining.py</c> wrote, or the
    /// <c>.safetensors</c> twin of an export): the student strictly, the teacher's encoder from <c>model_ema</c>, the AdamW
    /// moments when present, and the position (the epoch after the file's <c>epoch</c>; an unchanged export of ours resumes
    /// at its exact step). Requires BootMAE mode with both injections on and decoder heads equal to
    /// <see cref="BootMaeArchitecture.Heads"/>. A checkpoint found by <see cref="ResumeFromCheckpoint"/> takes precedence.
    /// Nothing in the file is executed. Default null. See docs/scale-out.md.
    /// </summary>
    public string? InitialState;

    // ---- Run: seed, device, threads, reports ----

    /// <summary>Seed of initialisation, data order, masks and augmentation. Default 1.</summary>
    public int Seed = DefaultSeed;

    /// <summary>Device. Default <see cref="BootMaeDevice.Auto"/>.</summary>
    public BootMaeDevice Device = BootMaeDevice.Auto;

    /// <summary>CUDA device index. Default 0.</summary>
    public int GpuDeviceId;

    /// <summary>Use the CPU when CUDA is asked for but unavailable (logged), instead of failing. Default true.</summary>
    public bool FallbackToCpu = true;

    /// <summary>Torch intra-op threads (process-wide); null (default) leaves libtorch's choice.</summary>
    public int? NumberOfThreads;

    /// <summary>Reports metrics every this many steps (and at each epoch end). Default 50.</summary>
    public int LogEveryNSteps = DefaultLogEveryNSteps;

    /// <summary>On cancellation return the encoder trained so far instead of throwing <see cref="OperationCanceledException"/>. Default false.</summary>
    public bool ReturnModelOnCancellation;

    // ---- Checkpoints and previews ----

    /// <summary>Folder for checkpoints (student, teacher, optimizer, position). Default null: none.</summary>
    public string? CheckpointDirectory;

    /// <summary>Checkpoint every this many steps; null (default) = at the end of every epoch.</summary>
    public long? CheckpointEveryNSteps;

    /// <summary>Checkpoints kept (older ones are deleted). Default 2.</summary>
    public int CheckpointsToKeep = 2;

    /// <summary>Continue from the newest valid checkpoint in <see cref="CheckpointDirectory"/> when there is one. Default false.</summary>
    public bool ResumeFromCheckpoint;

    /// <summary>When set, a PNG of original | masked | reconstructed images is written here at the end of every epoch, so you can
    /// watch what the pixel regressor learns. The images are the first ones of the first batch. Default null.</summary>
    public string? ReconstructionPreviewPath;

    /// <summary>Images in the reconstruction preview. Default 6.</summary>
    public int ReconstructionPreviewCount = 6;

    /// <summary>Whether the pixel loss trains the student: always in MAE mode, otherwise unless <see cref="Target"/> is Feature.</summary>
    internal bool UsesPixelLoss => Mode == BootMaeMode.Mae || Target != BootMaeTarget.Feature;

    /// <summary>Whether the feature loss (and so a teacher) is used: BootMAE mode unless <see cref="Target"/> is Pixel.</summary>
    internal bool UsesFeatureLoss => Mode == BootMaeMode.BootMae && Target != BootMaeTarget.Pixel;

    /// <summary>
    /// Checks every setting and throws <see cref="ArgumentException"/> whose <see cref="ArgumentException.ParamName"/> and
    /// message name the first bad one, its value and what it must be. The only check of these settings: the engine and the
    /// ML.NET estimator both call it.
    /// </summary>
    /// <exception cref="ArgumentException">A setting is out of its range or contradicts another.</exception>
    public void Validate()
    {
        Require(MaxEpochs > 0, nameof(MaxEpochs), MaxEpochs, "must be positive");
        Require(MaxSteps is null or > 0, nameof(MaxSteps), MaxSteps, "must be positive, or null for no cap");
        Require(BatchSize > 0, nameof(BatchSize), BatchSize, "must be positive");
        Require(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), LearningRate, "must be a positive number");
        Require(MinLearningRateFraction is >= 0 and <= 1, nameof(MinLearningRateFraction), MinLearningRateFraction, "must be in [0, 1]");
        Require(WarmupFraction is >= 0 and < 1, nameof(WarmupFraction), WarmupFraction, "must be in [0, 1)");
        Require(WeightDecay >= 0, nameof(WeightDecay), WeightDecay, "must not be negative");
        Require(MaeDecoderDepth > 0, nameof(MaeDecoderDepth), MaeDecoderDepth, "must be positive");
        Require(MaskRatio is > 0 and < 1, nameof(MaskRatio), MaskRatio, "must be in (0, 1)");
        Require(MaskJitter is null or >= 0, nameof(MaskJitter), MaskJitter, "must not be negative (0 turns the jitter off, null scales it to the grid)");
        Require(Teacher != BootMaeTeacher.Frozen || TeacherEncoder is not null, nameof(TeacherEncoder), TeacherEncoder, "is required when Teacher is Frozen");
        Require(TeacherFraction > 0, nameof(TeacherFraction), TeacherFraction, "must be positive");
        foreach (var (name, value) in new[] { (nameof(EmaMomentumStart), EmaMomentumStart), (nameof(EmaMomentumMid), EmaMomentumMid), (nameof(EmaMomentumEnd), EmaMomentumEnd) })
        {
            Require(value is null or (>= 0 and <= 1), name, value, "must be in [0, 1], or null to scale it to the run");
        }

        Require(EmaMomentumFloor is >= 0 and < 1, nameof(EmaMomentumFloor), EmaMomentumFloor, "must be in [0, 1)");
        Require(FeatureLossWeight >= 0, nameof(FeatureLossWeight), FeatureLossWeight, "must not be negative");
        Require(FeatureLossRampFraction is >= 0 and <= 1, nameof(FeatureLossRampFraction), FeatureLossRampFraction, "must be in [0, 1]");
        Require(PixelTargetEpsilon > 0 && double.IsFinite(PixelTargetEpsilon), nameof(PixelTargetEpsilon), PixelTargetEpsilon, "must be a positive number");
        Require(InitialState is null || InitialEncoder is null, nameof(InitialState), InitialState, "cannot be combined with InitialEncoder (the checkpoint holds the encoder); set one of them");
        Require(InitialState is null || Mode == BootMaeMode.BootMae, nameof(InitialState), InitialState, "needs Mode = BootMae (the official checkpoint is a BootMAE model)");
        Require(NumberOfThreads is null or > 0, nameof(NumberOfThreads), NumberOfThreads, "must be positive, or null for libtorch's choice");
        Require(LogEveryNSteps > 0, nameof(LogEveryNSteps), LogEveryNSteps, "must be positive");
        Require(CheckpointEveryNSteps is null or > 0, nameof(CheckpointEveryNSteps), CheckpointEveryNSteps, "must be positive, or null for every epoch end");
        Require(CheckpointsToKeep > 0, nameof(CheckpointsToKeep), CheckpointsToKeep, "must be positive");
        Require(!ResumeFromCheckpoint || !string.IsNullOrEmpty(CheckpointDirectory), nameof(ResumeFromCheckpoint), ResumeFromCheckpoint, "needs a CheckpointDirectory");
        Require(ReconstructionPreviewCount > 0, nameof(ReconstructionPreviewCount), ReconstructionPreviewCount, "must be positive");
    }

    /// <summary>A shallow copy (encoders are shared, not copied): what the ML.NET estimator completes for one run.</summary>
    internal BootMaePretrainerSettings Clone() => (BootMaePretrainerSettings)MemberwiseClone();

    /// <summary>The settings that must not change between a checkpoint and its resume, with the run's length.</summary>
    internal string Fingerprint(long totalSteps) => string.Join('|', new object[]
    {
        Mode, Target, Teacher, Masking, MaskRatio, TeacherFraction, BatchSize, MaxEpochs, totalSteps, Seed,
        InjectRegressor, InjectPredictor, WeightMask, NormPixTarget, MaeDecoderDepth,
        FeatureTargetNormalization, PixelTargetEpsilon, Augment, EmaMomentumFloor,
    }.Select(o => Convert.ToString(o, CultureInfo.InvariantCulture)));

    internal static void Require(bool ok, string name, object? value, string rule)
    {
        if (!ok)
        {
            throw new ArgumentException($"{name} is {Convert.ToString(value, CultureInfo.InvariantCulture) ?? "null"}: it {rule}.", name);
        }
    }
}
