using Microsoft.ML.BootMae.Classification;
using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Fine-tunes a BootMAE encoder with a linear head for multiclass image classification, or trains only the head on a
/// frozen encoder (the linear probe, <see cref="Options.FreezeEncoder"/>). Create it with
/// <see cref="BootMaeCatalog.BootMaeImageClassification(MulticlassClassificationCatalog.MulticlassClassificationTrainers, string, string, string, string, BootMaeEncoder, int, int, IDataView)"/>.
/// </summary>
/// <remarks>
/// <format type="text/markdown"><![CDATA[
/// | Input and output columns | |
/// | -- | -- |
/// | Label | `Key<UInt32>` (use `MapValueToKey`); rows with a missing key (0) are skipped with a warning |
/// | Image | `VarVector<Byte>` (LoadRawImageBytes), `Image` (LoadImages) or `Vector<Single, C, H, W>` (ExtractPixels) |
/// | Score (output) | `Vector<Single, K>` of class probabilities |
/// | PredictedLabel (output) | `Key<UInt32, K>` with the label's key values |
///
/// | Trainer characteristics | |
/// | -- | -- |
/// | Machine learning task | Multiclass classification |
/// | Is normalization required? | No |
/// | Is caching required? | No |
/// | Required NuGet in addition to Microsoft.ML | Microsoft.ML.BootMae, TorchSharp-cpu or a TorchSharp CUDA bundle |
/// | Exportable to ONNX | No |
///
/// The encoder passed in is copied: it is neither changed nor disposed.
/// ]]></format>
/// </remarks>
public sealed class BootMaeImageClassificationTrainer : IEstimator<BootMaeImageClassificationTransformer>
{
    private readonly Options _options;
    private readonly IHostEnvironment? _env;

    internal BootMaeImageClassificationTrainer(IHostEnvironment? env, Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.ValidateCommon(options.InferenceBatchSize);
        options.Training.Validate(options.Encoder?.Architecture ?? options.Architecture);
        // Classification uses the encoder only, so Architecture's decoder members do not matter (the encoder's shape is used).
        if (options.Encoder is { } encoder && options.Architecture is { } architecture)
        {
            BootMaeEncoderShape.RequireFits(encoder.Architecture, architecture, "Encoder", "Architecture (leave it null to use the encoder's)", nameof(options));
        }

        _env = env;
        _options = options;
    }

    /// <summary>
    /// Settings of <see cref="BootMaeImageClassificationTrainer"/>: the ML.NET concerns (columns, the starting encoder, the
    /// validation set, inference batch, bad-image policy, callbacks, MLContext-resolved seed and device) here, and the
    /// fine-tuning run itself in <see cref="Training"/>.
    /// </summary>
    /// <remarks>
    /// The training settings' properties on this class (<see cref="MaxEpochs"/>, <see cref="LearningRate"/>, …) read and
    /// write <see cref="Training"/>; they are kept so code written before <see cref="Training"/> existed keeps working.
    /// Settings added since are set on <see cref="Training"/> only.
    /// </remarks>
    public sealed class Options : BootMaeTrainingOptionsBase
    {
        private FineTuneSettings _training = new();

        /// <summary>Default values of the ML.NET-only settings.</summary>
        internal static class Defaults
        {
            internal const string LabelColumnName = "Label";
            internal const string ScoreColumnName = "Score";
            internal const string PredictedLabelColumnName = "PredictedLabel";
            // Only the ML.NET-side ones; the training defaults are FineTuneSettings' initialisers.
            internal const int InferenceBatchSize = 32;
        }

        /// <summary>
        /// The fine-tuning run: every training setting, its default and its check (<see cref="FineTuneSettings.Validate"/>).
        /// The trainer trains on a copy completed with the Options' <see cref="BootMaeTrainingOptionsBase.Seed"/>,
        /// <see cref="BootMaeTrainingOptionsBase.Device"/> and <see cref="BootMaeTrainingOptionsBase.FallbackToCpu"/> resolved
        /// against the MLContext, with the on-device <see cref="FineTuneSettings.Augment"/> off
        /// (<see cref="BootMaeTrainingOptionsBase.Augment"/> augments while decoding instead), and with
        /// <see cref="FineTuneSettings.LayerDecay"/> 1 (none) when it is null and no <see cref="Encoder"/> is given; those four
        /// fields of this object are not read. Default: a new <see cref="FineTuneSettings"/>.
        /// </summary>
        public FineTuneSettings Training
        {
            get => _training;
            set => _training = value ?? throw new ArgumentNullException(nameof(value), "Training cannot be null; assign new FineTuneSettings() for the defaults.");
        }

        /// <summary>The label column, <c>Key&lt;UInt32&gt;</c>. Default <c>"Label"</c>.</summary>
        public string LabelColumnName = Defaults.LabelColumnName;

        /// <summary>The added score column. Default <c>"Score"</c>.</summary>
        public string ScoreColumnName = Defaults.ScoreColumnName;

        /// <summary>The added predicted-label column. Default <c>"PredictedLabel"</c>.</summary>
        public string PredictedLabelColumnName = Defaults.PredictedLabelColumnName;

        /// <summary>The pretrained encoder to start from (copied, not changed). Default <c>null</c>: a randomly initialised encoder of <see cref="BootMaeTrainingOptionsBase.Architecture"/>.</summary>
        public BootMaeEncoder? Encoder;

        /// <summary>Labelled data (same image and label columns, same key mapping) scored after every epoch: metrics,
        /// early stopping and best-model selection use its loss. Default <c>null</c>.</summary>
        public IDataView? ValidationSet;

        /// <summary>
        /// <see cref="BootMaePrecision.BFloat16Mixed"/> fine-tunes in mixed precision (bfloat16 matrix products, 32-bit master
        /// weights, optimizer state, norms and loss) where the hardware has fast bfloat16, and in 32-bit elsewhere;
        /// <see cref="BootMaePrecision.Float32"/> and <see cref="BootMaePrecision.BFloat16"/> (which has no teacher to apply to here)
        /// train in 32-bit. The fitted transformer predicts in 32-bit. Default <see cref="BootMaePrecision.Float32"/>.
        /// </summary>
        public BootMaePrecision Precision { get => Training.Precision; set => Training.Precision = value; }

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

        /// <inheritdoc cref="FineTuneSettings.MaxEpochs"/>
        public int MaxEpochs { get => Training.MaxEpochs; set => Training.MaxEpochs = value; }

        /// <inheritdoc cref="FineTuneSettings.BatchSize"/>
        public int BatchSize { get => Training.BatchSize; set => Training.BatchSize = value; }

        /// <inheritdoc cref="FineTuneSettings.LearningRate"/>
        public double LearningRate { get => Training.LearningRate; set => Training.LearningRate = value; }

        /// <inheritdoc cref="FineTuneSettings.MinLearningRate"/>
        public double MinLearningRate { get => Training.MinLearningRate; set => Training.MinLearningRate = value; }

        /// <inheritdoc cref="FineTuneSettings.LayerDecay"/>
        public double? LayerDecay { get => Training.LayerDecay; set => Training.LayerDecay = value; }

        /// <inheritdoc cref="FineTuneSettings.WeightDecay"/>
        public double WeightDecay { get => Training.WeightDecay; set => Training.WeightDecay = value; }

        /// <inheritdoc cref="FineTuneSettings.DropPathRate"/>
        public double DropPathRate { get => Training.DropPathRate; set => Training.DropPathRate = value; }

        /// <inheritdoc cref="FineTuneSettings.LabelSmoothing"/>
        public double LabelSmoothing { get => Training.LabelSmoothing; set => Training.LabelSmoothing = value; }

        /// <inheritdoc cref="FineTuneSettings.WarmupFraction"/>
        public double WarmupFraction { get => Training.WarmupFraction; set => Training.WarmupFraction = value; }

        /// <inheritdoc cref="FineTuneSettings.HeadWarmupFraction"/>
        public double? HeadWarmupFraction { get => Training.HeadWarmupFraction; set => Training.HeadWarmupFraction = value; }

        /// <inheritdoc cref="FineTuneSettings.FreezeEncoder"/>
        public bool FreezeEncoder { get => Training.FreezeEncoder; set => Training.FreezeEncoder = value; }

        /// <inheritdoc cref="FineTuneSettings.MixupAlpha"/>
        public double MixupAlpha { get => Training.MixupAlpha; set => Training.MixupAlpha = value; }

        /// <inheritdoc cref="FineTuneSettings.CutmixAlpha"/>
        public double CutmixAlpha { get => Training.CutmixAlpha; set => Training.CutmixAlpha = value; }

        /// <inheritdoc cref="FineTuneSettings.SourceBlock"/>
        public int? SourceBlock { get => Training.SourceBlock; set => Training.SourceBlock = value; }

        /// <inheritdoc cref="FineTuneSettings.EarlyStoppingPatience"/>
        public int? EarlyStoppingPatience { get => Training.EarlyStoppingPatience; set => Training.EarlyStoppingPatience = value; }

        /// <inheritdoc cref="FineTuneSettings.EarlyStoppingMinDelta"/>
        public double EarlyStoppingMinDelta { get => Training.EarlyStoppingMinDelta; set => Training.EarlyStoppingMinDelta = value; }

        /// <inheritdoc cref="FineTuneSettings.ReturnBestModel"/>
        public bool ReturnBestModel { get => Training.ReturnBestModel; set => Training.ReturnBestModel = value; }

        /// <inheritdoc cref="FineTuneSettings.CheckpointDirectory"/>
        public string? CheckpointDirectory { get => Training.CheckpointDirectory; set => Training.CheckpointDirectory = value; }

        /// <inheritdoc cref="FineTuneSettings.CheckpointEveryNSteps"/>
        public long? CheckpointEveryNSteps { get => Training.CheckpointEveryNSteps; set => Training.CheckpointEveryNSteps = value; }

        /// <inheritdoc cref="FineTuneSettings.CheckpointsToKeep"/>
        public int CheckpointsToKeep { get => Training.CheckpointsToKeep; set => Training.CheckpointsToKeep = value; }

        /// <inheritdoc cref="FineTuneSettings.ResumeFromCheckpoint"/>
        public bool ResumeFromCheckpoint { get => Training.ResumeFromCheckpoint; set => Training.ResumeFromCheckpoint = value; }
    }

    /// <summary>Checks the input shape and adds the Score and PredictedLabel columns.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ImageColumn.CheckShape(inputSchema, _options.ImageColumnName);
        ImageColumn.CheckLabelShape(inputSchema, _options.LabelColumnName);
        var label = ImageColumn.Find(inputSchema, _options.LabelColumnName)!.Value;
        bool hasTextKeyValues = label.Annotations.Any(a => a.Name == "KeyValues" && a.ItemType is TextDataViewType);
        var kinds = new List<(string, DataViewType)>
        {
            ("ScoreColumnSetId", new KeyDataViewType(typeof(uint), int.MaxValue)),
        };
        if (hasTextKeyValues)
        {
            kinds.Add(("SlotNames", new VectorDataViewType(TextDataViewType.Instance, 2)));
        }

        var score = SchemaShapeFactory.FloatVector(_options.ScoreColumnName, new[] { "ScoreColumnKind", "ScoreValueKind" }, typedAnnotations: kinds);
        var predicted = SchemaShapeFactory.CopyOf(inputSchema, _options.LabelColumnName, _options.PredictedLabelColumnName);
        return SchemaShapeFactory.Merge(inputSchema, new[] { score, predicted });
    }

    /// <summary>Trains the classifier on <paramref name="input"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A column is missing or of the wrong type.</exception>
    /// <exception cref="InvalidOperationException">The data has no rows, or CUDA was required (by the Options or by <c>MLContext.GpuDeviceId</c>) and is missing.</exception>
    /// <exception cref="OperationCanceledException">
    /// Cancelled through <see cref="BootMaeTrainingOptionsBase.CancellationToken"/> or <c>MLContext.CancelExecution()</c>
    /// (checked before every step), unless <see cref="BootMaeTrainingOptionsBase.ReturnModelOnCancellation"/>.
    /// </exception>
    public BootMaeImageClassificationTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        BootMaeRuntime.EnsureTorchLoaded();
        var options = _options;
        var image = ImageColumn.Resolve(input.Schema, options.ImageColumnName, nameof(input));
        var key = ImageColumn.ResolveLabel(input.Schema, options.LabelColumnName, nameof(input));
        int classes = (int)key.Count;
        ImageColumnInfo? validationImage = null;
        if (options.ValidationSet is { } validation)
        {
            validationImage = ImageColumn.Resolve(validation.Schema, options.ImageColumnName, "ValidationSet");
            var validationKey = ImageColumn.ResolveLabel(validation.Schema, options.LabelColumnName, "ValidationSet");
            if (validationKey.Count != key.Count)
            {
                throw new ArgumentOutOfRangeException("ValidationSet",
                    $"The validation label '{options.LabelColumnName}' has {validationKey.Count} classes but the training label has {key.Count}. Map both with the same MapValueToKey transformer (fit it on the training data and apply it to both).");
            }
        }

        var architecture = options.Encoder?.Architecture ?? options.Architecture ?? BootMaeArchitecture.VitBase16;
        architecture.Validate();
        // SourceBlock against the now known depth, before the data is read.
        options.Training.Validate(architecture);

        using var log = new BootMaeLogger(_env, "BootMaeImageClassification", options.LogCallback);
        using var cancellation = new TrainingCancellation(_env, options.CancellationToken, "BootMaeImageClassification");
        cancellation.ThrowIfCanceledBeforeStart();
        long rows = DataViewImageBatchSource.CountRows(input);
        if (rows == 0)
        {
            throw new InvalidOperationException("BootMaeImageClassification: the training data has no rows; check the data path and any filters before the trainer.");
        }

        int seed = BootMaeHost.ResolveSeed(options.Seed, _env);
        var device = BootMaeHost.ResolveDevice(options, _env);
        // Logs the device, and fails now rather than after the data is read when CUDA is required and missing (or the
        // GpuDeviceId does not exist); the engine trains on exactly this device.
        var resolved = TorchDevices.Resolve(device, log.Info);

        TorchDevices.SetThreads(options.Training.NumberOfThreads, log.Info);
        if (options.Encoder is null)
        {
            log.Warning("BootMaeImageClassification: no Encoder given; training from a randomly initialised encoder. Pass a pretrained BootMaeEncoder for good accuracy.");
        }

        log.Info($"BootMaeImageClassification: {rows} images, {classes} classes, column '{image.Name}' ({image.Kind}), {(options.FreezeEncoder ? "linear probe (frozen encoder)" : "fine-tuning")}, " +
            $"{options.MaxEpochs} epochs of batch {options.BatchSize}, seed {seed}.");
        var keyValues = LabelKeyValues.FromColumn(input.Schema[options.LabelColumnName], classes);
        var train = new DataViewImageBatchSource(input, image, options.LabelColumnName, architecture,
            options.Augment && image.Kind != ImageColumnKind.Pixels ? ImageAugmentation.For(architecture) : null,
            seed, shuffle: true, options.SkipBadImages, rows, log, "training", options.ShufflePoolSize, options.MaxImagePixels);
        DataViewImageBatchSource? validationSource = options.ValidationSet is { } v
            ? new DataViewImageBatchSource(v, validationImage!, options.LabelColumnName, architecture, augmentation: null, seed,
                shuffle: false, options.SkipBadImages, rowCount: null, log, "validation", maxImagePixels: options.MaxImagePixels)
            : null;

        using var randomEncoder = options.Encoder is null ? BootMaeEncoder.CreateRandom(architecture, seed) : null;
        ImageClassifierEngine engine;
        try
        {
            engine = ImageClassifierEngine.Train(options.Encoder ?? randomEncoder!, classes, cancellation.Watch(train),
                validationSource is null ? null : cancellation.Watch(validationSource), RunSettings(options, seed, device), options.MetricsCallback, log.Info, cancellation.Token,
                resolved);
        }
        catch (OperationCanceledException ex) when (cancellation.ByContext)
        {
            throw cancellation.Explain(ex, options.CheckpointDirectory);
        }

        return new BootMaeImageClassificationTransformer(engine, architecture, classes, keyValues, options.ImageColumnName,
            options.LabelColumnName, options.ScoreColumnName, options.PredictedLabelColumnName, options.InferenceBatchSize, options.MaxImagePixels)
        {
            LogEnvironment = _env,
        };
    }

    // The settings of one run: a copy of Options.Training completed with what the ML.NET layer resolves (the MLContext's
    // seed and device), with the engine's on-device augmentation off, as this layer augments while decoding, and without
    // layer decay or head warm-up when the encoder is the random one this layer creates (its lower blocks hold nothing
    // worth keeping, and its features nothing worth a linear head).
    internal static FineTuneSettings RunSettings(Options o, int seed, DeviceRequest device)
    {
        var run = o.Training.Clone();
        run.Seed = seed;
        run.Device = device.Device;
        run.FallbackToCpu = device.FallbackToCpu;
        run.Augment = false;
        if (o.Encoder is null)
        {
            run.LayerDecay ??= 1.0;
            run.HeadWarmupFraction ??= 0;
        }

        return run;
    }
}
