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
        options.ValidateCommon(options.InferenceBatchSize);
        options.Training.Validate();
        if (options.InitialEncoder is { } initial && options.Architecture is { } architecture)
        {
            BootMaeEncoderShape.RequireFits(initial.Architecture, architecture, "InitialEncoder", "Architecture (leave it null to use the encoder's)", nameof(options));
        }

        _env = env;
        _options = options;
    }

    /// <summary>
    /// Settings of <see cref="BootMaePretrainingEstimator"/>: the ML.NET concerns (columns, pooling, inference batch,
    /// bad-image policy, callbacks, MLContext-resolved seed and device) here, and the pretraining run itself in
    /// <see cref="Training"/>.
    /// </summary>
    /// <remarks>
    /// The training settings' properties on this class (<see cref="MaxEpochs"/>, <see cref="MaskRatio"/>, …) read and write
    /// <see cref="Training"/>; they are kept so code written before <see cref="Training"/> existed keeps working. Settings
    /// added since are set on <see cref="Training"/> only.
    /// </remarks>
    public sealed class Options : BootMaeTrainingOptionsBase
    {
        private BootMaePretrainerSettings _training = new();

        /// <summary>Default values of the ML.NET-only settings.</summary>
        internal static class Defaults
        {
            // Only the ML.NET-side ones; the training defaults are BootMaePretrainerSettings' initialisers.
            internal const string OutputColumnName = "Features";
            internal const int InferenceBatchSize = 32;
        }

        /// <summary>
        /// The pretraining run: every training setting, its default and its check (<see cref="BootMaePretrainerSettings.Validate"/>).
        /// The estimator trains on a copy completed with the Options' <see cref="BootMaeTrainingOptionsBase.Seed"/>,
        /// <see cref="BootMaeTrainingOptionsBase.Device"/>, <see cref="BootMaeTrainingOptionsBase.GpuDeviceId"/> and
        /// <see cref="BootMaeTrainingOptionsBase.FallbackToCpu"/> resolved against the MLContext, and with the on-device
        /// <see cref="BootMaePretrainerSettings.Augment"/> off (<see cref="BootMaeTrainingOptionsBase.Augment"/> augments while
        /// decoding instead); those five fields of this object are not read. Default: a new <see cref="BootMaePretrainerSettings"/>.
        /// </summary>
        public BootMaePretrainerSettings Training
        {
            get => _training;
            set => _training = value ?? throw new ArgumentNullException(nameof(value), "Training cannot be null; assign new BootMaePretrainerSettings() for the defaults.");
        }

        /// <summary>The added embedding column. Default <c>"Features"</c>.</summary>
        public string OutputColumnName = Defaults.OutputColumnName;

        /// <summary>Pooling of the output column. Default <see cref="BootMaePooling.Mean"/>.</summary>
        public BootMaePooling Pooling = BootMaePooling.Mean;

        /// <summary>0-based encoder block the output column reads. Default <c>null</c>: the last block.</summary>
        public int? SourceBlock;

        /// <summary>Images per forward pass when the fitted transformer runs. Default 32.</summary>
        public int InferenceBatchSize = Defaults.InferenceBatchSize;

        /// <inheritdoc/>
        public override long? MaxSteps { get => Training.MaxSteps; set => Training.MaxSteps = value; }

        /// <inheritdoc/>
        public override int? NumberOfThreads { get => Training.NumberOfThreads; set => Training.NumberOfThreads = value; }

        /// <inheritdoc/>
        public override bool ReturnModelOnCancellation { get => Training.ReturnModelOnCancellation; set => Training.ReturnModelOnCancellation = value; }

        /// <inheritdoc/>
        public override int LogEveryNSteps { get => Training.LogEveryNSteps; set => Training.LogEveryNSteps = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.MaxEpochs"/>
        public int MaxEpochs { get => Training.MaxEpochs; set => Training.MaxEpochs = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.BatchSize"/>
        public int BatchSize { get => Training.BatchSize; set => Training.BatchSize = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.LearningRate"/>
        public double LearningRate { get => Training.LearningRate; set => Training.LearningRate = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.MinLearningRateFraction"/>
        public double MinLearningRateFraction { get => Training.MinLearningRateFraction; set => Training.MinLearningRateFraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.WarmupFraction"/>
        public double WarmupFraction { get => Training.WarmupFraction; set => Training.WarmupFraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.WeightDecay"/>
        public double WeightDecay { get => Training.WeightDecay; set => Training.WeightDecay = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.FeatureLossWeight"/>
        public double FeatureLossWeight { get => Training.FeatureLossWeight; set => Training.FeatureLossWeight = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.FeatureLossRampFraction"/>
        public double FeatureLossRampFraction { get => Training.FeatureLossRampFraction; set => Training.FeatureLossRampFraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaMomentumStart"/>
        public double? EmaMomentumStart { get => Training.EmaMomentumStart; set => Training.EmaMomentumStart = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaMomentumMid"/>
        public double? EmaMomentumMid { get => Training.EmaMomentumMid; set => Training.EmaMomentumMid = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaMomentumEnd"/>
        public double? EmaMomentumEnd { get => Training.EmaMomentumEnd; set => Training.EmaMomentumEnd = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaMomentumFloor"/>
        public double EmaMomentumFloor { get => Training.EmaMomentumFloor; set => Training.EmaMomentumFloor = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaRamp1Fraction"/>
        public double EmaRamp1Fraction { get => Training.EmaRamp1Fraction; set => Training.EmaRamp1Fraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.EmaRamp2EndFraction"/>
        public double EmaRamp2EndFraction { get => Training.EmaRamp2EndFraction; set => Training.EmaRamp2EndFraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.FeatureTargetNormalization"/>
        public BootMaeFeatureTargetNormalization FeatureTargetNormalization { get => Training.FeatureTargetNormalization; set => Training.FeatureTargetNormalization = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.PixelTargetEpsilon"/>
        public double PixelTargetEpsilon { get => Training.PixelTargetEpsilon; set => Training.PixelTargetEpsilon = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.MaskRatio"/>
        public double MaskRatio { get => Training.MaskRatio; set => Training.MaskRatio = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.MaskJitter"/>
        public int? MaskJitter { get => Training.MaskJitter; set => Training.MaskJitter = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.Masking"/>
        public BootMaeMasking Masking { get => Training.Masking; set => Training.Masking = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.Target"/>
        public BootMaeTarget Target { get => Training.Target; set => Training.Target = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.Teacher"/>
        public BootMaeTeacher Teacher { get => Training.Teacher; set => Training.Teacher = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.TeacherEncoder"/>
        public BootMaeEncoder? TeacherEncoder { get => Training.TeacherEncoder; set => Training.TeacherEncoder = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.TeacherFraction"/>
        public double TeacherFraction { get => Training.TeacherFraction; set => Training.TeacherFraction = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.InjectRegressor"/>
        public bool InjectRegressor { get => Training.InjectRegressor; set => Training.InjectRegressor = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.InjectPredictor"/>
        public bool InjectPredictor { get => Training.InjectPredictor; set => Training.InjectPredictor = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.WeightMask"/>
        public bool WeightMask { get => Training.WeightMask; set => Training.WeightMask = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.NormPixTarget"/>
        public bool NormPixTarget { get => Training.NormPixTarget; set => Training.NormPixTarget = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.CheckpointsToKeep"/>
        public int CheckpointsToKeep { get => Training.CheckpointsToKeep; set => Training.CheckpointsToKeep = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.Mode"/>
        public BootMaeMode Mode { get => Training.Mode; set => Training.Mode = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.MaeDecoderDepth"/>
        public int MaeDecoderDepth { get => Training.MaeDecoderDepth; set => Training.MaeDecoderDepth = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.InitialEncoder"/>
        public BootMaeEncoder? InitialEncoder { get => Training.InitialEncoder; set => Training.InitialEncoder = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.InitialState"/>
        public string? InitialState { get => Training.InitialState; set => Training.InitialState = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.Precision"/>
        public BootMaePrecision Precision { get => Training.Precision; set => Training.Precision = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.CheckpointDirectory"/>
        public string? CheckpointDirectory { get => Training.CheckpointDirectory; set => Training.CheckpointDirectory = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.CheckpointEveryNSteps"/>
        public long? CheckpointEveryNSteps { get => Training.CheckpointEveryNSteps; set => Training.CheckpointEveryNSteps = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.ResumeFromCheckpoint"/>
        public bool ResumeFromCheckpoint { get => Training.ResumeFromCheckpoint; set => Training.ResumeFromCheckpoint = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.ReconstructionPreviewPath"/>
        public string? ReconstructionPreviewPath { get => Training.ReconstructionPreviewPath; set => Training.ReconstructionPreviewPath = value; }

        /// <inheritdoc cref="BootMaePretrainerSettings.ReconstructionPreviewCount"/>
        public int ReconstructionPreviewCount { get => Training.ReconstructionPreviewCount; set => Training.ReconstructionPreviewCount = value; }
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
        var pretrainer = new BootMaePretrainer(architecture, RunSettings(options, seed, device)) { Hooks = Hooks };
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

    // The settings of one run: a copy of Options.Training completed with what the ML.NET layer resolves (the MLContext's
    // seed and device) and with the engine's on-device augmentation off, as this layer augments while decoding.
    internal static BootMaePretrainerSettings RunSettings(Options o, int seed, DeviceRequest device)
    {
        var run = o.Training.Clone();
        run.Seed = seed;
        run.Device = device.Device;
        run.GpuDeviceId = device.GpuDeviceId;
        run.FallbackToCpu = device.FallbackToCpu;
        run.Augment = false;
        return run;
    }
}
