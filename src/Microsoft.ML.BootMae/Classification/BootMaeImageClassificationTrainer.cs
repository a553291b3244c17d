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
        options.ValidateCommon(options.MaxEpochs, options.BatchSize, options.InferenceBatchSize);
        // Classification uses the encoder only, so Architecture's decoder members do not matter (the encoder's shape is used).
        if (options.Encoder is { } encoder && options.Architecture is { } architecture)
        {
            BootMaeEncoderShape.RequireFits(encoder.Architecture, architecture, "Encoder", "Architecture (leave it null to use the encoder's)", nameof(options));
        }

        if (options.GpuDeviceId is { } gpu && gpu != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.GpuDeviceId, "Image classification trains on CUDA device 0 only; set GpuDeviceId = 0 (or make the GPU visible as device 0 with CUDA_VISIBLE_DEVICES).");
        }

        if (options.EarlyStoppingPatience is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.EarlyStoppingPatience, "EarlyStoppingPatience must be at least 1 (or null for no early stopping).");
        }

        _env = env;
        _options = options;
    }

    /// <summary>Settings of <see cref="BootMaeImageClassificationTrainer"/>.</summary>
    public sealed class Options : BootMaeTrainingOptionsBase
    {
        /// <summary>Default values of the ML.NET-only settings.</summary>
        internal static class Defaults
        {
            internal const string LabelColumnName = "Label";
            internal const string ScoreColumnName = "Score";
            internal const string PredictedLabelColumnName = "PredictedLabel";
            // Only the ML.NET-side ones; the training defaults live in FineTuneDefaults, shared with the engine.
            internal const int InferenceBatchSize = 32;
        }

        /// <summary>The label column, <c>Key&lt;UInt32&gt;</c>. Default <c>"Label"</c>.</summary>
        public string LabelColumnName = Defaults.LabelColumnName;

        /// <summary>The added score column. Default <c>"Score"</c>.</summary>
        public string ScoreColumnName = Defaults.ScoreColumnName;

        /// <summary>The added predicted-label column. Default <c>"PredictedLabel"</c>.</summary>
        public string PredictedLabelColumnName = Defaults.PredictedLabelColumnName;

        /// <summary>The pretrained encoder to start from (copied, not changed). Default <c>null</c>: a randomly initialised encoder of <see cref="BootMaeTrainingOptionsBase.Architecture"/>.</summary>
        public BootMaeEncoder? Encoder;

        /// <summary>Passes over the training data. Default 20.</summary>
        public int MaxEpochs = FineTuneDefaults.MaxEpochs;

        /// <summary>Images per optimizer step. Default 32.</summary>
        public int BatchSize = FineTuneDefaults.BatchSize;

        /// <summary>Absolute peak learning rate (after warmup, before cosine decay; no batch scaling). Default 1e-3.</summary>
        public double LearningRate = FineTuneDefaults.LearningRate;

        /// <summary>Learning rate at the last step of the cosine. Default 1e-6.</summary>
        public double MinLearningRate = FineTuneDefaults.MinLearningRate;

        /// <summary>
        /// Layer-wise learning-rate decay: block k of L gets LayerDecay^(L−k). Default <c>null</c>: chosen for the encoder —
        /// none (1) without a pretrained <see cref="Encoder"/> or for 4 blocks or fewer, the official 0.65 from 12 blocks on,
        /// linear in between. Short pretraining of a shallow encoder loses 3–5 points with 0.65 (docs/results.md).
        /// </summary>
        public double? LayerDecay;

        /// <summary>AdamW weight decay. Default 0.05.</summary>
        public double WeightDecay = FineTuneDefaults.WeightDecay;

        /// <summary>Stochastic depth rate of the encoder's last block (rising linearly from 0 at the first). Default 0; the paper's
        /// ViT-B recipe uses 0.1, which cost short fine-tuning of small encoders accuracy (docs/results.md).</summary>
        public double DropPathRate = FineTuneDefaults.DropPathRate;

        /// <summary>Label smoothing of the cross-entropy. Default 0.1.</summary>
        public double LabelSmoothing = FineTuneDefaults.LabelSmoothing;

        /// <summary>Share of the steps spent in linear warmup. Default 0.1.</summary>
        public double WarmupFraction = FineTuneDefaults.WarmupFraction;

        /// <summary>Train only the head on a frozen encoder (the linear probe). Default <c>false</c>.</summary>
        public bool FreezeEncoder;

        /// <summary>Mixup with Beta(α, α) mixing; 0 turns it off. Default 0 (the paper uses 0.8).</summary>
        public double MixupAlpha;

        /// <summary>CutMix with Beta(α, α); 0 turns it off (with mixup also on, each batch picks one). Default 0 (the paper uses 1.0).</summary>
        public double CutmixAlpha;

        /// <summary>0-based encoder block the head reads. Default <c>null</c>: the last block. The official linear probe of a 12-block ViT keeps its first 10 blocks: 9.</summary>
        public int? SourceBlock;

        /// <summary>Labelled data (same image and label columns, same key mapping) scored after every epoch: metrics,
        /// early stopping and best-model selection use its loss. Default <c>null</c>.</summary>
        public IDataView? ValidationSet;

        /// <summary>Stop after this many epochs without improvement of the monitored loss (the validation loss, or the
        /// training loss without a <see cref="ValidationSet"/>). Default <c>null</c>: no early stopping.</summary>
        public int? EarlyStoppingPatience;

        /// <summary>Smallest decrease of the monitored loss that counts as an improvement. Default 0.</summary>
        public double EarlyStoppingMinDelta = FineTuneDefaults.EarlyStoppingMinDelta;

        /// <summary>Return the weights of the epoch with the lowest monitored loss instead of the last epoch's. Default <c>true</c>.</summary>
        public bool ReturnBestModel = true;

        /// <summary>Images per forward pass when the fitted transformer runs. Default 32.</summary>
        public int InferenceBatchSize = Defaults.InferenceBatchSize;

        /// <summary>Folder for fine-tuning checkpoints (weights, optimizer, position, early-stopping state and best
        /// weights), written atomically, also on cancellation. Default <c>null</c>: none.</summary>
        public string? CheckpointDirectory;

        /// <summary>Checkpoint every this many steps. Default <c>null</c>: at every epoch end (after its validation).</summary>
        public long? CheckpointEveryNSteps;

        /// <summary>Checkpoints kept in <see cref="CheckpointDirectory"/> (older ones are deleted). Default 2.</summary>
        public int CheckpointsToKeep = FineTuneDefaults.CheckpointsToKeep;

        /// <summary>Continue from the newest valid checkpoint in <see cref="CheckpointDirectory"/> when there is one;
        /// damaged ones, and ones made with another architecture, class count or run-shaping settings, are skipped
        /// (logged). Default <c>false</c>.</summary>
        public bool ResumeFromCheckpoint;
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
        if (options.SourceBlock is { } block && (block < 0 || block >= architecture.Depth))
        {
            throw new ArgumentOutOfRangeException(nameof(input), block, $"SourceBlock must be a 0-based encoder block in [0, {architecture.Depth - 1}].");
        }

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
        // Logs the device, and fails now rather than after the data is read when CUDA is required and missing.
        var resolved = TorchDevices.Resolve(device, log.Info);
        if (resolved.type == TorchSharp.DeviceType.CUDA && resolved.index > 0)
        {
            throw new ArgumentOutOfRangeException(nameof(input), device.GpuDeviceId,
                $"Image classification trains on CUDA device 0 only, but {device.Origin ?? "GpuDeviceId"} selects device {device.GpuDeviceId}; set MLContext.GpuDeviceId = 0 (or make the GPU visible as device 0 with CUDA_VISIBLE_DEVICES).");
        }

        TorchDevices.SetThreads(options.NumberOfThreads, log.Info);
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
                validationSource is null ? null : cancellation.Watch(validationSource), ToSettings(options, seed, device), options.MetricsCallback, log.Info, cancellation.Token);
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

    // The engine settings of a run: every Options field that the engine declares is carried over here (SettingsDefaultsTests
    // checks that by reflection), except Augment, which this layer applies while decoding.
    internal static FineTuneSettings ToSettings(Options o, int seed, DeviceRequest device) => new()
    {
        MaxEpochs = o.MaxEpochs,
        BatchSize = o.BatchSize,
        LearningRate = o.LearningRate,
        MinLearningRate = o.MinLearningRate,
        LayerDecay = o.LayerDecay ?? (o.Encoder is { } pretrained ? FineTuneSettings.AutoLayerDecay(pretrained.Architecture.Depth) : 1.0),
        WeightDecay = o.WeightDecay,
        DropPathRate = o.DropPathRate,
        LabelSmoothing = o.LabelSmoothing,
        WarmupFraction = o.WarmupFraction,
        FreezeEncoder = o.FreezeEncoder,
        MixupAlpha = o.MixupAlpha,
        CutmixAlpha = o.CutmixAlpha,
        SourceBlock = o.SourceBlock,
        MaxSteps = o.MaxSteps,
        Augment = false, // this layer augments while decoding (Options.Augment)
        Seed = seed,
        Device = device.Device,
        FallbackToCpu = device.FallbackToCpu,
        LogEveryNSteps = o.LogEveryNSteps,
        ReturnModelOnCancellation = o.ReturnModelOnCancellation,
        EarlyStoppingPatience = o.EarlyStoppingPatience,
        EarlyStoppingMinDelta = o.EarlyStoppingMinDelta,
        ReturnBestModel = o.ReturnBestModel,
        CheckpointDirectory = o.CheckpointDirectory,
        CheckpointEveryNSteps = o.CheckpointEveryNSteps,
        CheckpointsToKeep = o.CheckpointsToKeep,
        ResumeFromCheckpoint = o.ResumeFromCheckpoint,
    };
}
