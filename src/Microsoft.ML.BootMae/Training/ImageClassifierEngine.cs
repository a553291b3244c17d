using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Fine-tunes (or linearly probes) a <see cref="BootMaeEncoder"/> for image classification and runs the result:
/// the engine behind <c>BootMaeImageClassification</c>. Spec §6: mean of the patch tokens (cls excluded) → fc_norm →
/// Linear, soft-target cross-entropy with label smoothing, AdamW with layer-wise lr decay, warmup + cosine per step.
/// </summary>
/// <remarks>
/// The training run is <see cref="FineTuneRun"/> (driven by <see cref="TrainingLoop"/>), the file format of <see cref="Save"/>
/// is <see cref="ClassifierFile"/>, the AdamW groups are <see cref="FineTuneParameterGroups"/> and what trains is
/// <see cref="ClassifierFreezePolicy"/>.
/// </remarks>
internal sealed class ImageClassifierEngine : IDisposable
{
    private readonly ImageClassifier _model;
    private readonly Device _device;
    private readonly DisposeGate _gate = new();

    private ImageClassifierEngine(ImageClassifier model, Device device)
    {
        _model = model;
        _device = device;
        _model.eval();
    }

    /// <summary>Number of classes K (scores per image).</summary>
    public int NumberOfClasses => _model.NumberOfClasses;

    /// <summary>The encoder's shape.</summary>
    public BootMaeArchitecture Architecture => _model.Encoder.Architecture;

    /// <summary>True for a linear probe (frozen encoder, BatchNorm head).</summary>
    public bool IsLinearProbe => _model.IsLinearProbe;

    /// <summary>0-based block whose patch tokens are pooled.</summary>
    public int SourceBlock => _model.SourceBlock;

    internal ImageClassifier Model => _model;

    /// <summary>
    /// Trains a classifier on a copy of <paramref name="encoder"/> (the argument is left unchanged).
    /// </summary>
    /// <param name="encoder">The pretrained encoder (the student of pretraining).</param>
    /// <param name="numClasses">K ≥ 2; labels must be 0-based and below K.</param>
    /// <param name="train">Labelled training batches.</param>
    /// <param name="validation">Labelled validation batches evaluated after every epoch, or null.</param>
    /// <param name="settings">Optimisation settings.</param>
    /// <param name="metricsCallback">Receives training reports every <see cref="FineTuneSettings.LogEveryNSteps"/> steps and at each epoch end, and a validation report per epoch.</param>
    /// <param name="log">Receives human-readable progress lines.</param>
    /// <param name="cancellationToken">Checked between steps.</param>
    /// <param name="device">The device, already resolved by the caller (the ML.NET trainer, which merges the MLContext's
    /// choice); null resolves <see cref="FineTuneSettings.Device"/> here.</param>
    /// <exception cref="OperationCanceledException">Cancelled, unless <see cref="FineTuneSettings.ReturnModelOnCancellation"/> is set and a step was done.</exception>
    public static ImageClassifierEngine Train(BootMaeEncoder encoder, int numClasses, IImageBatchSource train, IImageBatchSource? validation,
        FineTuneSettings settings, Action<BootMaeTrainingMetrics>? metricsCallback, Action<string>? log, CancellationToken cancellationToken,
        Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(encoder);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(settings);
        BootMaeRuntime.EnsureTorchLoaded();
        ArgumentOutOfRangeException.ThrowIfLessThan(numClasses, 2);
        var architecture = encoder.Architecture;
        settings.Validate(architecture);

        device ??= TorchDevices.Resolve(settings.Device, gpuDeviceId: 0, settings.FallbackToCpu, log);
        var model = CreateModel(encoder.Module, architecture, numClasses, settings.FreezeEncoder, settings.SourceBlock ?? architecture.Depth - 1);
        try
        {
            using (var generator = new Generator((ulong)settings.Seed))
            {
                model.Head.Initialize(generator);
            }

            model.to(device);
            using (MixedPrecision.Configure(model, settings.Precision, device, log))
            {
                new FineTuneRun(model, numClasses, train, validation, settings, metricsCallback, log, device).Run(cancellationToken);
            }

            return new ImageClassifierEngine(model, device);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Class probabilities (softmax) of <paramref name="count"/> images given as [count, C, H, W] floats in [0, 1]:
    /// count × K values, row-major. Safe to call from several threads at once.
    /// </summary>
    public float[] PredictScores(float[] pixels01, int count)
    {
        ArgumentNullException.ThrowIfNull(pixels01);
        using var use = _gate.Enter(this);
        using var scope = NewDisposeScope();
        using var mode = inference_mode();
        var logits = _model.forward(InputNormalization.Input(pixels01, count, Architecture, _device));
        return nn.functional.softmax(logits, 1).cpu().contiguous().data<float>().ToArray();
    }

    /// <summary>Writes the network as an ONNX model (pixels → scores, predicted) to <paramref name="fullPath"/>, atomically.</summary>
    public void ExportOnnx(string fullPath, IReadOnlyList<string>? classNames)
    {
        using var use = _gate.Enter(this);
        OnnxExport.BootMaeOnnxExporter.Write(OnnxExport.BootMaeOnnxExporter.BuildClassifier(_model, classNames), fullPath);
    }

    /// <summary>A copy of the (fine-tuned) encoder, for featurization or further training. Its final LN is the
    /// pretrained one: fine-tuning replaces that LN by identity and never updates it.</summary>
    public BootMaeEncoder ExtractEncoder()
    {
        using var use = _gate.Enter(this);
        var module = EncoderWeights.Copy(_model.Encoder, Architecture, "the classifier's encoder");
        return new BootMaeEncoder(module.to(_device), Architecture);
    }

    /// <summary>Writes the classifier (header and weights) and leaves the stream open.</summary>
    public void Save(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        using var use = _gate.Enter(this);
        ClassifierFile.Write(stream, _model);
    }

    /// <summary>Reads a classifier written by <see cref="Save"/> (exactly its bytes; the stream stays open) onto the CPU.</summary>
    /// <exception cref="InvalidDataException">Not a classifier, damaged, or saved for another architecture or class count.</exception>
    public static ImageClassifierEngine Load(Stream stream, BootMaeArchitecture expectedArchitecture, int expectedNumClasses)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(expectedArchitecture);
        BootMaeRuntime.EnsureTorchLoaded();
        return new ImageClassifierEngine(ClassifierFile.Read(stream, expectedArchitecture, expectedNumClasses), CPU);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        // Waits for predictions already running on other threads; later ones throw ObjectDisposedException.
        if (_gate.Close())
        {
            _model.Dispose();
        }
    }

    /// <summary>See <see cref="FineTuneParameterGroups.LayerDecayScale"/>.</summary>
    internal static double LayerDecayScale(string name, int depth, double layerDecay) => FineTuneParameterGroups.LayerDecayScale(name, depth, layerDecay);

    /// <summary>See <see cref="FineTuneParameterGroups.Build"/>.</summary>
    internal static List<FineTuneParameterGroup> BuildParameterGroups(ImageClassifier model, double layerDecay, double weightDecay) =>
        FineTuneParameterGroups.Build(model, layerDecay, weightDecay);


    private static ImageClassifier CreateModel(VisionTransformerEncoder source, BootMaeArchitecture architecture, int numClasses, bool linearProbe, int sourceBlock)
    {
        var encoder = new VisionTransformerEncoder(architecture);
        var model = new ImageClassifier(encoder, numClasses, linearProbe, sourceBlock);
        try
        {
            EncoderWeights.CopyInto(source, encoder, "the encoder");

            ClassifierFreezePolicy.Apply(model);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A CPU copy of <paramref name="model"/>'s state_dict, outside any dispose scope (the caller disposes it).</summary>
    internal static Dictionary<string, Tensor> Snapshot(nn.Module model)
    {
        using var scope = NewDisposeScope();
        return model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().clone().DetachFromDisposeScope());
    }

    /// <summary>Disposes the tensors of a <see cref="Snapshot"/> (null: nothing to do).</summary>
    internal static void DisposeSnapshot(Dictionary<string, Tensor>? snapshot)
    {
        foreach (var t in snapshot?.Values ?? Enumerable.Empty<Tensor>())
        {
            t.Dispose();
        }
    }

    /// <summary>Copies <paramref name="weights"/> into <paramref name="model"/>; the keys and shapes must match exactly.</summary>
    internal static void CopyState(nn.Module model, IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        var own = model.state_dict();
        var missing = own.Keys.Where(k => !weights.ContainsKey(k)).ToList();
        var unexpected = weights.Keys.Where(k => !own.ContainsKey(k)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            throw new InvalidDataException($"{source} does not match the classifier. Missing: [{string.Join(", ", missing.Take(8))}]. Unexpected: [{string.Join(", ", unexpected.Take(8))}].");
        }

        using var _ = no_grad();
        foreach (var (key, target) in own)
        {
            var value = weights[key];
            if (!value.shape.SequenceEqual(target.shape))
            {
                throw new InvalidDataException($"{source}: '{key}' has shape [{string.Join(", ", value.shape)}] but the classifier needs [{string.Join(", ", target.shape)}].");
            }

            target.copy_(value);
        }
    }
}
