using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Pretrains a BootMAE encoder (self-supervised, no labels) on an image column. Fitting runs the whole pretraining;
/// the result adds an embedding column and exposes the encoder for fine-tuning or featurization.
/// Create it with <see cref="BootMaeCatalog.BootMaePretrain(TransformsCatalog, string, string, BootMaeArchitecture, int, int)"/>.
/// </summary>
/// <remarks>
/// <format type="text/markdown"><![CDATA[
/// | Input column | Output column |
/// | -- | -- |
/// | `VarVector<Byte>` (LoadRawImageBytes, preferred), `Image` (LoadImages) or `Vector<Single, C, H, W>` (ExtractPixels) | `Vector<Single, D>` (`Vector<Single, N, D>` with Tokens pooling) |
///
/// | Trainer characteristics | |
/// | -- | -- |
/// | Machine learning task | Self-supervised representation learning |
/// | Is normalization required? | No (images are scaled to [0, 1] and normalised inside) |
/// | Is caching required? | No (images are decoded and augmented on a background thread) |
/// | Required NuGet in addition to Microsoft.ML | Microsoft.ML.BootMae, TorchSharp-cpu or a TorchSharp CUDA bundle |
/// | Exportable to ONNX | No |
///
/// Save the fitted pipeline with `mlContext.Model.SaveBootMae`; the encoder alone with `BootMaeEncoder.Save`.
/// ]]></format>
/// </remarks>
public sealed class BootMaePretrainingEstimator : IEstimator<BootMaeEncoderTransformer>
{
    private readonly Options _options;
    private readonly IHostEnvironment? _env;

    internal BootMaePretrainingEstimator(IHostEnvironment? env, Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.ValidateCommon(options.MaxEpochs, options.BatchSize, options.InferenceBatchSize);
        if (options.ResumeFromCheckpoint && string.IsNullOrEmpty(options.CheckpointDirectory))
        {
            throw new ArgumentException("ResumeFromCheckpoint needs CheckpointDirectory.", nameof(options));
        }

        if (options.ReconstructionPreviewCount <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.ReconstructionPreviewCount, "ReconstructionPreviewCount must be positive.");
        }

        if (options.InitialEncoder is { } initial && options.Architecture is { } architecture)
        {
            BootMaeEncoderShape.RequireFits(initial.Architecture, architecture, "InitialEncoder", "Architecture (leave it null to use the encoder's)", nameof(options));
        }

        // The engine's own checks, now rather than after the data has been read (the seed and device do not matter here).
        ToSettings(options, seed: 1, new DeviceRequest(options.Device, options.GpuDeviceId ?? 0, options.FallbackToCpu ?? true, Origin: null)).Validate();
        _env = env;
        _options = options;
    }

    /// <summary>Settings of <see cref="BootMaePretrainingEstimator"/>.</summary>
    public sealed class Options : BootMaeTrainingOptionsBase
    {
        /// <summary>Default values of the ML.NET-only settings.</summary>
        internal static class Defaults
        {
            // Only the ML.NET-side ones; the training defaults live in PretrainingDefaults, shared with the engine.
            internal const string OutputColumnName = "Features";
            internal const int InferenceBatchSize = 32;
        }

        /// <summary>The added embedding column. Default <c>"Features"</c>.</summary>
        public string OutputColumnName = Defaults.OutputColumnName;

        /// <summary>Passes over the data. Default 100 (the paper uses 800 on ImageNet).</summary>
        public int MaxEpochs = PretrainingDefaults.MaxEpochs;

        /// <summary>Images per optimizer step. Default 64.</summary>
        public int BatchSize = PretrainingDefaults.BatchSize;

        /// <summary>Base learning rate, scaled by BatchSize / 256 (the paper's rule). Default 1.5e-3 (the paper's 1.5e-4 suits 800-epoch runs; shorter runs need more).</summary>
        public double LearningRate = PretrainingDefaults.LearningRate;

        /// <summary>Learning rate at the last step, as a fraction of the scaled peak. Default 0.01.</summary>
        public double MinLearningRateFraction = PretrainingDefaults.MinLearningRateFraction;

        /// <summary>Share of the steps spent in linear warmup. Default 0.05 (40 of 800 epochs in the paper).</summary>
        public double WarmupFraction = PretrainingDefaults.WarmupFraction;

        /// <summary>AdamW weight decay (not applied to biases, norms and position tables). Default 0.05.</summary>
        public double WeightDecay = PretrainingDefaults.WeightDecay;

        /// <summary>Final weight λ of the feature-prediction loss (ramped up over <see cref="FeatureLossRampFraction"/> of the run). Default 1.</summary>
        public double FeatureLossWeight = PretrainingDefaults.FeatureLossWeight;

        /// <summary>Share of the run over which λ ramps up linearly from 0 to <see cref="FeatureLossWeight"/>. Default 0.25 (the official code).</summary>
        public double FeatureLossRampFraction = PretrainingDefaults.FeatureLossRampFraction;

        /// <summary>EMA momentum of the teacher at the start. Default <c>null</c>: scaled to the run's length (the teacher's horizon is 1/250 of the run), never below <see cref="EmaMomentumFloor"/>.</summary>
        public double? EmaMomentumStart;

        /// <summary>EMA momentum at the end of the first ramp (<see cref="EmaRamp1Fraction"/> of the run). Default <c>null</c>: scaled (horizon 1/25 of the run), never below <see cref="EmaMomentumFloor"/>.</summary>
        public double? EmaMomentumMid;

        /// <summary>EMA momentum from the end of the second ramp (<see cref="EmaRamp2EndFraction"/> of the run) on. Default <c>null</c>: scaled (horizon 1/2.5 of the run), never below <see cref="EmaMomentumFloor"/>.</summary>
        public double? EmaMomentumEnd;

        /// <summary>The lowest value a scaled (null) EMA momentum may take, so the teacher remembers at least 1/(1 − floor) steps
        /// even in short runs. Default 0.996.</summary>
        public double EmaMomentumFloor = PretrainingDefaults.EmaMomentumFloor;

        /// <summary>Share of the run of the first EMA ramp (<see cref="EmaMomentumStart"/> → <see cref="EmaMomentumMid"/>). Default 0.125 (100 of 800 epochs).</summary>
        public double EmaRamp1Fraction = PretrainingDefaults.EmaRamp1Fraction;

        /// <summary>Share of the run at which the second EMA ramp (<see cref="EmaMomentumMid"/> → <see cref="EmaMomentumEnd"/>) ends. Default 0.5 (400 of 800 epochs).</summary>
        public double EmaRamp2EndFraction = PretrainingDefaults.EmaRamp2EndFraction;

        /// <summary>How the teacher's features become the target. Default <see cref="BootMaeFeatureTargetNormalization.BatchStandardized"/>;
        /// the paper's is <see cref="BootMaeFeatureTargetNormalization.LayerNorm"/>.</summary>
        public BootMaeFeatureTargetNormalization FeatureTargetNormalization = BootMaeFeatureTargetNormalization.BatchStandardized;

        /// <summary>ε added to each patch's pixel variance (pixels in [−1, 1]) in the normalised pixel target. Default 1e-5 (the official value).</summary>
        public double PixelTargetEpsilon = PretrainingDefaults.PixelTargetEpsilon;

        /// <summary>Share of patches masked. Default 0.75.</summary>
        public double MaskRatio = PretrainingDefaults.MaskRatio;

        /// <summary>Largest roll jitter of the block masks, in patches. Default <c>null</c>: the official 3 scaled to the grid,
        /// round(3·N/196) (1 on 7×7 and 8×8 grids); 0 turns it off.</summary>
        public int? MaskJitter;

        /// <summary>Masking strategy. Default <see cref="BootMaeMasking.BlockFill"/> (the official code); MAE mode always masks at random.</summary>
        public BootMaeMasking Masking = BootMaeMasking.BlockFill;

        /// <summary>Targets the student predicts. Default <see cref="BootMaeTarget.Both"/>.</summary>
        public BootMaeTarget Target = BootMaeTarget.Both;

        /// <summary>Teacher kind. Default <see cref="BootMaeTeacher.Ema"/>; <see cref="BootMaeTeacher.Frozen"/> needs <see cref="TeacherEncoder"/>.</summary>
        public BootMaeTeacher Teacher = BootMaeTeacher.Ema;

        /// <summary>The fixed teacher for <see cref="BootMaeTeacher.Frozen"/>. Default <c>null</c>.</summary>
        public BootMaeEncoder? TeacherEncoder;

        /// <summary>Share of the image the teacher sees (paper Table 5); below 1 it sees a sample of the masked patches and the
        /// feature loss covers only those. Default 1 (the full image).</summary>
        public double TeacherFraction = PretrainingDefaults.TeacherFraction;

        /// <summary>Shallow-feature cross-attention in the pixel regressor. Default <c>true</c>.</summary>
        public bool InjectRegressor = true;

        /// <summary>Deep-feature cross-attention in the feature predictor. Default <c>true</c>.</summary>
        public bool InjectPredictor = true;

        /// <summary>Centre-weighted loss mask (paper App. C). Default <c>true</c>.</summary>
        public bool WeightMask = true;

        /// <summary>Per-patch normalised pixel target. Default <c>true</c>.</summary>
        public bool NormPixTarget = true;

        /// <summary>Checkpoints kept in <see cref="CheckpointDirectory"/> (older ones are deleted). Default 2.</summary>
        public int CheckpointsToKeep = PretrainingDefaults.CheckpointsToKeep;

        /// <summary>BootMAE, or plain MAE as a baseline. Default <see cref="BootMaeMode.BootMae"/>.</summary>
        public BootMaeMode Mode = BootMaeMode.BootMae;

        /// <summary>Blocks of the decoder in <see cref="BootMaeMode.Mae"/> mode (unused in BootMAE mode). Default 8 (MAE's).</summary>
        public int MaeDecoderDepth = PretrainingDefaults.MaeDecoderDepth;

        /// <summary>Continue from these weights instead of a random start. Default <c>null</c>.</summary>
        public BootMaeEncoder? InitialEncoder;

        /// <summary>
        /// Starts from a whole pretraining checkpoint in the official BootMAE layout (student, teacher, optimizer moments,
        /// epoch): see <see cref="BootMaePretrainerSettings.InitialState"/> and docs/scale-out.md. Default <c>null</c>.
        /// </summary>
        public string? InitialState;

        /// <summary>Pooling of the output column. Default <see cref="BootMaePooling.Mean"/>.</summary>
        public BootMaePooling Pooling = BootMaePooling.Mean;

        /// <summary>0-based encoder block the output column reads. Default <c>null</c>: the last block.</summary>
        public int? SourceBlock;

        /// <summary>Images per forward pass when the fitted transformer runs. Default 32.</summary>
        public int InferenceBatchSize = Defaults.InferenceBatchSize;

        /// <summary>
        /// <see cref="BootMaePrecision.BFloat16"/> runs the momentum teacher in bfloat16 (32-bit master weights) where the
        /// hardware has fast bfloat16 and falls back to 32-bit elsewhere. The fitted transformer infers in 32-bit.
        /// Default <see cref="BootMaePrecision.BFloat16"/>.
        /// </summary>
        public BootMaePrecision Precision = BootMaePrecision.BFloat16;

        /// <summary>Folder for training checkpoints (student, teacher, optimizer, position). Default <c>null</c>: no checkpoints.</summary>
        public string? CheckpointDirectory;

        /// <summary>Steps between checkpoints when <see cref="CheckpointDirectory"/> is set. Default <c>null</c>: at the end of every epoch.</summary>
        public long? CheckpointEveryNSteps;

        /// <summary>Resume from the newest valid checkpoint in <see cref="CheckpointDirectory"/> when there is one. Default <c>false</c>.</summary>
        public bool ResumeFromCheckpoint;

        /// <summary>
        /// When set, a PNG of original | masked | reconstructed images (the first images of the first batch, fixed masks) is
        /// written here at the end of every epoch, to watch what the pixel regressor learns. Default <c>null</c>: none.
        /// </summary>
        public string? ReconstructionPreviewPath;

        /// <summary>Images in the reconstruction preview. Default 6.</summary>
        public int ReconstructionPreviewCount = PretrainingDefaults.ReconstructionPreviewCount;
    }

    /// <summary>Checks the input shape and adds the embedding column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ImageColumn.CheckShape(inputSchema, _options.ImageColumnName);
        return SchemaShapeFactory.Merge(inputSchema, new[] { SchemaShapeFactory.FloatVector(_options.OutputColumnName) });
    }

    /// <summary>Pretrains an encoder on <paramref name="input"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The image column is missing or of the wrong type.</exception>
    /// <exception cref="InvalidOperationException">The data has no rows, or CUDA was required (by the Options or by <c>MLContext.GpuDeviceId</c>) and is missing.</exception>
    /// <exception cref="OperationCanceledException">
    /// Cancelled through <see cref="BootMaeTrainingOptionsBase.CancellationToken"/> or <c>MLContext.CancelExecution()</c>
    /// (checked before every step), unless <see cref="BootMaeTrainingOptionsBase.ReturnModelOnCancellation"/>.
    /// </exception>
    public BootMaeEncoderTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        BootMaeRuntime.EnsureTorchLoaded();
        var options = _options;
        var image = ImageColumn.Resolve(input.Schema, options.ImageColumnName, nameof(input));
        var architecture = options.Architecture ?? options.InitialEncoder?.Architecture ?? BootMaeArchitecture.VitBase16;
        architecture.Validate();
        if (options.SourceBlock is { } block && (block < 0 || block >= architecture.Depth))
        {
            throw new ArgumentOutOfRangeException(nameof(input), block, $"SourceBlock must be a 0-based encoder block in [0, {architecture.Depth - 1}].");
        }

        using var log = new BootMaeLogger(_env, "BootMaePretrain", options.LogCallback);
        using var cancellation = new TrainingCancellation(_env, options.CancellationToken, "BootMaePretrain");
        cancellation.ThrowIfCanceledBeforeStart();
        long rows = DataViewImageBatchSource.CountRows(input);
        if (rows == 0)
        {
            throw new InvalidOperationException($"BootMaePretrain: the training data has no rows; check the data path and any filters before the estimator.");
        }

        int seed = BootMaeHost.ResolveSeed(options.Seed, _env);
        var device = BootMaeHost.ResolveDevice(options, _env);
        // Fails now, not after the data is read, when CUDA is required and missing; the engine logs the device it uses.
        TorchDevices.Resolve(device, log: device.Origin is null ? null : log.Info);
        log.Info($"BootMaePretrain: {rows} images from column '{image.Name}' ({image.Kind}), {architecture.ImageSize}x{architecture.ImageSize}x{architecture.Channels}, " +
            $"D={architecture.EmbedDim}, depth {architecture.Depth}, {options.MaxEpochs} epochs of batch {options.BatchSize}, seed {seed}, mode {options.Mode}, augment {options.Augment}.");
        var source = new DataViewImageBatchSource(input, image, labelColumnName: null, architecture,
            options.Augment && image.Kind != ImageColumnKind.Pixels ? ImageAugmentation.For(architecture) : null,
            seed, shuffle: true, options.SkipBadImages, rows, log, "training", options.ShufflePoolSize, options.MaxImagePixels);
        var pretrainer = new BootMaePretrainer(architecture, ToSettings(options, seed, device)) { Hooks = Hooks };
        BootMaeEncoder encoder;
        try
        {
            encoder = pretrainer.Train(cancellation.Watch(source), options.MetricsCallback, log.Info, cancellation.Token);
        }
        catch (OperationCanceledException ex) when (cancellation.ByContext)
        {
            throw cancellation.Explain(ex, options.CheckpointDirectory);
        }

        if (source.BadImagesSkipped > 0)
        {
            log.Warning($"BootMaePretrain: {source.BadImagesSkipped} undecodable images were skipped in the last epoch.");
        }

        return new BootMaeEncoderTransformer(encoder, ownsEncoder: true, options.ImageColumnName, options.OutputColumnName,
            options.Pooling, options.SourceBlock, BootMaePrecision.Float32, options.InferenceBatchSize, options.MaxImagePixels)
        {
            LogEnvironment = _env,
        };
    }

    // Test seam (switches observed in the engine): passed to the pretrainer; null in every product path.
    internal PretrainingHooks? Hooks { get; set; }

    // The engine settings of a run: every Options field that the engine declares is carried over here (SettingsDefaultsTests
    // checks that by reflection), except Augment, which this layer applies while decoding.
    internal static BootMaePretrainerSettings ToSettings(Options o, int seed, DeviceRequest device) => new()
    {
        MaxEpochs = o.MaxEpochs,
        BatchSize = o.BatchSize,
        LearningRate = o.LearningRate,
        MaxSteps = o.MaxSteps,
        MinLearningRateFraction = o.MinLearningRateFraction,
        WarmupFraction = o.WarmupFraction,
        WeightDecay = o.WeightDecay,
        FeatureLossWeight = o.FeatureLossWeight,
        FeatureLossRampFraction = o.FeatureLossRampFraction,
        EmaRamp1Fraction = o.EmaRamp1Fraction,
        EmaRamp2EndFraction = o.EmaRamp2EndFraction,
        EmaMomentumStart = o.EmaMomentumStart,
        EmaMomentumMid = o.EmaMomentumMid,
        EmaMomentumEnd = o.EmaMomentumEnd,
        EmaMomentumFloor = o.EmaMomentumFloor,
        FeatureTargetNormalization = o.FeatureTargetNormalization,
        PixelTargetEpsilon = o.PixelTargetEpsilon,
        Augment = false, // this layer augments while decoding (Options.Augment)
        MaskRatio = o.MaskRatio,
        MaskJitter = o.MaskJitter,
        Masking = o.Masking,
        Target = o.Target,
        Teacher = o.Teacher,
        TeacherEncoder = o.TeacherEncoder,
        TeacherFraction = o.TeacherFraction,
        InjectRegressor = o.InjectRegressor,
        InjectPredictor = o.InjectPredictor,
        WeightMask = o.WeightMask,
        NormPixTarget = o.NormPixTarget,
        CheckpointsToKeep = o.CheckpointsToKeep,
        Mode = o.Mode,
        MaeDecoderDepth = o.MaeDecoderDepth,
        Seed = seed,
        Device = device.Device,
        FallbackToCpu = device.FallbackToCpu,
        GpuDeviceId = device.GpuDeviceId,
        NumberOfThreads = o.NumberOfThreads,
        Precision = o.Precision,
        LogEveryNSteps = o.LogEveryNSteps,
        CheckpointDirectory = o.CheckpointDirectory,
        CheckpointEveryNSteps = o.CheckpointEveryNSteps,
        ResumeFromCheckpoint = o.ResumeFromCheckpoint,
        ReturnModelOnCancellation = o.ReturnModelOnCancellation,
        InitialEncoder = o.InitialEncoder,
        InitialState = o.InitialState,
        ReconstructionPreviewPath = o.ReconstructionPreviewPath,
        ReconstructionPreviewCount = o.ReconstructionPreviewCount,
    };
}
