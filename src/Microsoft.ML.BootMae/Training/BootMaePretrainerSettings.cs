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
/// Settings of a pretraining run of <see cref="BootMaePretrainer"/>. Schedules are fractions of the run, so the
/// defaults make sense for a ten-minute CPU run and for a long GPU run alike. See docs/api.md for the table.
/// </summary>
public sealed class BootMaePretrainerSettings
{
    /// <summary>BootMAE (default) or plain MAE as a baseline.</summary>
    public BootMaeMode Mode = BootMaeMode.BootMae;

    /// <summary>Passes over the data. Default 100 (the paper uses 800 on ImageNet), as the ML.NET estimator's.</summary>
    public int MaxEpochs = PretrainingDefaults.MaxEpochs;

    /// <summary>Stops after this many optimizer steps (schedules span the shorter of this and the epochs). Default null: no cap.</summary>
    public long? MaxSteps;

    /// <summary>Images per step. Default 64.</summary>
    public int BatchSize = PretrainingDefaults.BatchSize;

    /// <summary>Base learning rate, scaled by BatchSize/256 (spec §5). Default 1.5e-3, higher than the paper's 1.5e-4 because short runs need it.</summary>
    public double LearningRate = PretrainingDefaults.LearningRate;

    /// <summary>Learning rate at the last step, as a fraction of the scaled peak. Default 0.01.</summary>
    public double MinLearningRateFraction = PretrainingDefaults.MinLearningRateFraction;

    /// <summary>Share of the run spent in linear warmup. Default 0.05.</summary>
    public double WarmupFraction = PretrainingDefaults.WarmupFraction;

    /// <summary>AdamW weight decay on matrices (biases, norms, cls token and position tables get none). Default 0.05.</summary>
    public double WeightDecay = PretrainingDefaults.WeightDecay;

    /// <summary>Final weight λ of the feature loss. Default 1.</summary>
    public double FeatureLossWeight = PretrainingDefaults.FeatureLossWeight;

    /// <summary>Share of the run over which λ ramps up linearly from 0. Default 0.25 (the official code).</summary>
    public double FeatureLossRampFraction = PretrainingDefaults.FeatureLossRampFraction;

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
    public double EmaMomentumFloor = PretrainingDefaults.EmaMomentumFloor;

    /// <summary>How the teacher's features become the target. Default <see cref="BootMaeFeatureTargetNormalization.BatchStandardized"/>
    /// (the official code: <see cref="BootMaeFeatureTargetNormalization.LayerNorm"/>).</summary>
    public BootMaeFeatureTargetNormalization FeatureTargetNormalization = BootMaeFeatureTargetNormalization.BatchStandardized;

    /// <summary>Share of the run of the first EMA ramp. Default 0.125 (100 of 800 epochs).</summary>
    public double EmaRamp1Fraction = PretrainingDefaults.EmaRamp1Fraction;

    /// <summary>Share of the run at which the second EMA ramp ends. Default 0.5 (400 of 800 epochs).</summary>
    public double EmaRamp2EndFraction = PretrainingDefaults.EmaRamp2EndFraction;

    /// <summary>Teacher kind. Default <see cref="BootMaeTeacher.Ema"/>.</summary>
    public BootMaeTeacher Teacher = BootMaeTeacher.Ema;

    /// <summary>The fixed teacher when <see cref="Teacher"/> is <see cref="BootMaeTeacher.Frozen"/>; must match the architecture.</summary>
    public BootMaeEncoder? TeacherEncoder;

    /// <summary>Targets. Default both.</summary>
    public BootMaeTarget Target = BootMaeTarget.Both;

    /// <summary>Masking strategy. Default block-wise plus random fill. MAE mode always masks at random.</summary>
    public BootMaeMasking Masking = BootMaeMasking.BlockFill;

    /// <summary>Share of patches masked. Default 0.75.</summary>
    public double MaskRatio = PretrainingDefaults.MaskRatio;

    /// <summary>Largest roll jitter of the block masks; null (default) scales the official 3 to the grid, round(3·N/196): 1 on 7×7 and 8×8 grids; 0 turns it off.</summary>
    public int? MaskJitter;

    /// <summary>Share of the image the teacher sees (paper Table 5): 1 (default) = the full image; smaller values feed cls plus
    /// that share of patches, sampled from the masked ones, and take the feature loss on them only.</summary>
    public double TeacherFraction = PretrainingDefaults.TeacherFraction;

    /// <summary>Cross-attention from the shallow block into the pixel regressor. Default true.</summary>
    public bool InjectRegressor = true;

    /// <summary>Cross-attention from the deep block into the feature predictor. Default true.</summary>
    public bool InjectPredictor = true;

    /// <summary>Centre-weighted loss mask (paper App. C). Default true.</summary>
    public bool WeightMask = true;

    /// <summary>Per-patch normalised pixel target. Default true.</summary>
    public bool NormPixTarget = true;

    /// <summary>
    /// ε added to each patch's pixel variance (pixels in [−1, 1]) in the normalised pixel target. The official 1e-5 turns
    /// nearly flat patches into amplified quantisation noise; a larger ε keeps their target near 0. Default 1e-5
    /// (see docs/results.md for what was measured).
    /// </summary>
    public double PixelTargetEpsilon = PretrainingDefaults.PixelTargetEpsilon;

    /// <summary>
    /// Random resized crop (area <c>0.5–1</c> below 64 pixels, else <c>0.2–1</c>) and horizontal flip of each batch
    /// before masking, on the device. Default true. The ML.NET estimator always passes false here and applies its own
    /// <see cref="BootMaeTrainingOptionsBase.Augment"/> (same default, true) while decoding instead, with the same crop
    /// ranges: augmenting the decoded image at its own resolution, on the background reader, before it is resized to
    /// the network's size, rather than the resized batch on the device (pixel-vector columns are never augmented there).
    /// </summary>
    public bool Augment = true;

    /// <summary>Blocks of the MAE-mode decoder. Default 8.</summary>
    public int MaeDecoderDepth = PretrainingDefaults.MaeDecoderDepth;

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

    /// <summary>Seed of initialisation, data order, masks and augmentation. Default 1.</summary>
    public int Seed = PretrainingDefaults.Seed;

    /// <summary>Device. Default <see cref="BootMaeDevice.Auto"/>.</summary>
    public BootMaeDevice Device = BootMaeDevice.Auto;

    /// <summary>CUDA device index. Default 0.</summary>
    public int GpuDeviceId;

    /// <summary>Use the CPU when CUDA is asked for but unavailable (logged), instead of failing. Default true.</summary>
    public bool FallbackToCpu = true;

    /// <summary>Torch intra-op threads (process-wide); null (default) leaves libtorch's choice.</summary>
    public int? NumberOfThreads;

    /// <summary><see cref="BootMaePrecision.BFloat16"/> (default) runs the teacher in bfloat16 (fp32 master weights) where the hardware
    /// has fast bfloat16 (CUDA, or CPUs with AVX-512 BF16/AMX), and falls back to fp32 elsewhere. <see cref="BootMaePrecision.BFloat16Mixed"/>
    /// also trains the student in mixed precision there (bf16 matrix products, fp32 masters; docs/gpu.md).</summary>
    public BootMaePrecision Precision = BootMaePrecision.BFloat16;

    /// <summary>Reports metrics every this many steps (and at each epoch end). Default 50.</summary>
    public int LogEveryNSteps = PretrainingDefaults.LogEveryNSteps;

    /// <summary>Folder for checkpoints (student, teacher, optimizer, position). Default null: none.</summary>
    public string? CheckpointDirectory;

    /// <summary>Checkpoint every this many steps; null (default) = at the end of every epoch.</summary>
    public long? CheckpointEveryNSteps;

    /// <summary>Checkpoints kept (older ones are deleted). Default 2.</summary>
    public int CheckpointsToKeep = PretrainingDefaults.CheckpointsToKeep;

    /// <summary>Continue from the newest valid checkpoint in <see cref="CheckpointDirectory"/> when there is one. Default false.</summary>
    public bool ResumeFromCheckpoint;

    /// <summary>On cancellation return the encoder trained so far instead of throwing <see cref="OperationCanceledException"/>. Default false.</summary>
    public bool ReturnModelOnCancellation;

    /// <summary>When set, a PNG of original | masked | reconstructed images is written here at the end of every epoch, so you can
    /// watch what the pixel regressor learns. The images are the first ones of the first batch. Default null.</summary>
    public string? ReconstructionPreviewPath;

    /// <summary>Images in the reconstruction preview. Default 6.</summary>
    public int ReconstructionPreviewCount = PretrainingDefaults.ReconstructionPreviewCount;

    /// <summary>Checks the settings and throws <see cref="ArgumentException"/> naming the bad one.</summary>
    public void Validate()
    {
        static void Require(bool ok, string name, string message)
        {
            if (!ok)
            {
                throw new ArgumentException($"{name}: {message}", name);
            }
        }

        Require(MaxEpochs > 0, nameof(MaxEpochs), "must be positive.");
        Require(MaxSteps is null or > 0, nameof(MaxSteps), "must be positive when set.");
        Require(BatchSize > 0, nameof(BatchSize), "must be positive.");
        Require(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), "must be a positive number.");
        Require(MinLearningRateFraction is >= 0 and <= 1, nameof(MinLearningRateFraction), "must be in [0, 1].");
        Require(WarmupFraction is >= 0 and < 1, nameof(WarmupFraction), "must be in [0, 1).");
        Require(WeightDecay >= 0, nameof(WeightDecay), "must be non-negative.");
        Require(FeatureLossWeight >= 0, nameof(FeatureLossWeight), "must be non-negative.");
        Require(FeatureLossRampFraction is >= 0 and <= 1, nameof(FeatureLossRampFraction), "must be in [0, 1].");
        Require(MaskRatio is > 0 and < 1, nameof(MaskRatio), "must be in (0, 1).");
        Require(TeacherFraction > 0, nameof(TeacherFraction), "must be positive.");
        Require(LogEveryNSteps > 0, nameof(LogEveryNSteps), "must be positive.");
        Require(CheckpointEveryNSteps is null or > 0, nameof(CheckpointEveryNSteps), "must be positive when set.");
        Require(CheckpointsToKeep > 0, nameof(CheckpointsToKeep), "must be positive.");
        Require(ReconstructionPreviewCount > 0, nameof(ReconstructionPreviewCount), "must be positive.");
        Require(!ResumeFromCheckpoint || CheckpointDirectory is not null, nameof(ResumeFromCheckpoint), "needs a CheckpointDirectory.");
        Require(InitialState is null || InitialEncoder is null, nameof(InitialState), "cannot be combined with InitialEncoder (the checkpoint holds the encoder).");
        Require(InitialState is null || Mode == BootMaeMode.BootMae, nameof(InitialState), "needs Mode = BootMae (the official checkpoint is a BootMAE model).");
        Require(Teacher != BootMaeTeacher.Frozen || TeacherEncoder is not null, nameof(TeacherEncoder), "is required when Teacher is Frozen.");
        Require(EmaMomentumFloor is >= 0 and < 1, nameof(EmaMomentumFloor), "must be in [0, 1).");
        Require(PixelTargetEpsilon > 0 && double.IsFinite(PixelTargetEpsilon), nameof(PixelTargetEpsilon), "must be a positive number.");
        foreach (var (name, value) in new[] { (nameof(EmaMomentumStart), EmaMomentumStart), (nameof(EmaMomentumMid), EmaMomentumMid), (nameof(EmaMomentumEnd), EmaMomentumEnd) })
        {
            Require(value is null or (>= 0 and <= 1), name, "must be in [0, 1].");
        }
    }
}
