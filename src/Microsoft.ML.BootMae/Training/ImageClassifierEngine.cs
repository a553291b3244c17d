using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Fine-tunes (or linearly probes) a <see cref="BootMaeEncoder"/> for image classification and runs the result:
/// the engine behind <c>BootMaeImageClassification</c>. Spec §6: mean of the patch tokens (cls excluded) → fc_norm →
/// Linear, soft-target cross-entropy with label smoothing, AdamW with layer-wise lr decay, warmup + cosine per step.
/// </summary>
/// <remarks>
/// File format of <see cref="Save"/>: the 8 bytes <c>BOOTMAEC</c>, a little-endian int32 header length, a UTF-8 JSON
/// header (format, version, architecture, class count, head kind, source block, payload length and SHA-256), then the
/// whole classifier's state_dict as a safetensors payload (keys <c>encoder.*</c> and <c>classifier.*</c>).
/// </remarks>
internal sealed class ImageClassifierEngine : IDisposable
{
    private const string FormatName = "bootmae-classifier";
    private const int FormatVersion = 1;
    private const string FineTuneKind = "FineTune";
    private const string LinearProbeKind = "LinearProbe";
    private const double Beta1 = 0.9;
    private const double Beta2 = 0.999;
    private const double Epsilon = 1e-8;
    private static readonly byte[] Magic = "BOOTMAEC"u8.ToArray();

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
    /// <exception cref="OperationCanceledException">Cancelled, unless <see cref="FineTuneSettings.ReturnModelOnCancellation"/> is set and a step was done.</exception>
    public static ImageClassifierEngine Train(BootMaeEncoder encoder, int numClasses, IImageBatchSource train, IImageBatchSource? validation,
        FineTuneSettings settings, Action<BootMaeTrainingMetrics>? metricsCallback, Action<string>? log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(encoder);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(settings);
        BootMaeRuntime.EnsureTorchLoaded();
        ArgumentOutOfRangeException.ThrowIfLessThan(numClasses, 2);
        var architecture = encoder.Architecture;
        settings.Validate(architecture);

        var device = ResolveDevice(settings.Device, settings.FallbackToCpu, log);
        var model = CreateModel(encoder.Module, architecture, numClasses, settings.FreezeEncoder, settings.SourceBlock ?? architecture.Depth - 1);
        try
        {
            using (var generator = new Generator((ulong)settings.Seed))
            {
                model.Head.Initialize(generator);
            }

            model.to(device);
            new Trainer(model, numClasses, train, validation, settings, metricsCallback, log, device).Run(cancellationToken);
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
        using var scope = NewDisposeScope();
        var (payload, length, sha256) = WeightsContainer.Serialize(_model.state_dict());
        WeightsContainer.Write(stream, Magic, new ClassifierHeader(FormatName, FormatVersion, Architecture, NumberOfClasses,
            IsLinearProbe ? LinearProbeKind : FineTuneKind, SourceBlock, length, sha256), payload);
    }

    /// <summary>Reads a classifier written by <see cref="Save"/> (exactly its bytes; the stream stays open) onto the CPU.</summary>
    /// <exception cref="InvalidDataException">Not a classifier, damaged, or saved for another architecture or class count.</exception>
    public static ImageClassifierEngine Load(Stream stream, BootMaeArchitecture expectedArchitecture, int expectedNumClasses)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(expectedArchitecture);
        BootMaeRuntime.EnsureTorchLoaded();
        var header = WeightsContainer.ReadHeader<ClassifierHeader>(stream, Magic, "classifier",
            "The model file is damaged or is not a BootMaeImageClassification model.");
        if (header.Format != FormatName || header.Version != FormatVersion)
        {
            throw new InvalidDataException($"Unsupported classifier format '{header.Format}' version {header.Version}; this package reads '{FormatName}' version {FormatVersion}.");
        }

        BootMaeEncoder.ValidateHeaderArchitecture(header.Architecture, "classifier");
        if (header.Architecture != expectedArchitecture)
        {
            throw new InvalidDataException($"The classifier was saved for architecture {header.Architecture} but {expectedArchitecture} was expected.");
        }

        if (header.NumberOfClasses != expectedNumClasses)
        {
            throw new InvalidDataException($"The classifier was saved with {header.NumberOfClasses} classes but {expectedNumClasses} were expected.");
        }

        if (header.HeadKind is not (FineTuneKind or LinearProbeKind) || header.SourceBlock < 0 || header.SourceBlock >= header.Architecture.Depth)
        {
            throw new InvalidDataException($"The classifier header has an invalid head kind '{header.HeadKind}' or source block {header.SourceBlock}.");
        }

        if (header.NumberOfClasses < 2)
        {
            throw new InvalidDataException($"The classifier header's field 'NumberOfClasses' is {header.NumberOfClasses}; at least 2 are needed.");
        }

        // Encoder plus the head's weight matrix: a lower bound of the state_dict, so a crafted size fails before allocating.
        WeightsContainer.CheckPayloadHolds(header.PayloadLength,
            VisionTransformerEncoder.StateElementCount(header.Architecture) + ((double)header.Architecture.EmbedDim * header.NumberOfClasses),
            "classifier", $"{BootMaeEncoder.Describe(header.Architecture)}, NumberOfClasses {header.NumberOfClasses}");
        var weights = WeightsContainer.ReadWeights(stream, header.PayloadLength, header.PayloadSha256 ?? string.Empty, "classifier");
        var model = new ImageClassifier(new VisionTransformerEncoder(header.Architecture), header.NumberOfClasses, header.HeadKind == LinearProbeKind, header.SourceBlock);
        try
        {
            CopyState(model, weights, "the classifier file");
            return new ImageClassifierEngine(model, CPU);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in weights.Values)
            {
                t.Dispose();
            }
        }
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

    /// <summary>
    /// Learning-rate multiplier of a classifier parameter (spec §6, §10.15): layer id 0 for patch_embed, cls_token and
    /// pos_embed, k + 1 for block k, L + 1 for everything else (fc_norm, head); scale = ld^(L + 1 − id).
    /// </summary>
    internal static double LayerDecayScale(string name, int depth, double layerDecay)
    {
        int id = depth + 1;
        if (name.StartsWith("encoder.", StringComparison.Ordinal))
        {
            var rest = name["encoder.".Length..];
            if (rest.StartsWith("patch_embed.", StringComparison.Ordinal) || rest is "cls_token" or "pos_embed")
            {
                id = 0;
            }
            else if (rest.StartsWith("blocks.", StringComparison.Ordinal))
            {
                var index = rest["blocks.".Length..];
                id = int.Parse(index[..index.IndexOf('.')], System.Globalization.CultureInfo.InvariantCulture) + 1;
            }
        }

        return Math.Pow(layerDecay, depth + 1 - id);
    }

    /// <summary>
    /// The AdamW groups: one per (layer id, decay or not), in a fixed order; only parameters that train are listed.
    /// The probe trains the Linear alone; fine-tuning trains everything except the fixed PE and the unused final LN.
    /// </summary>
    internal static List<FineTuneParameterGroup> BuildParameterGroups(ImageClassifier model, double layerDecay, double weightDecay)
    {
        int depth = model.Encoder.Depth;
        var groups = new SortedDictionary<(double Scale, bool NoDecay), List<(string, Parameter)>>(
            Comparer<(double Scale, bool NoDecay)>.Create((a, b) => a.Scale != b.Scale ? a.Scale.CompareTo(b.Scale) : a.NoDecay.CompareTo(b.NoDecay)));
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            var key = (LayerDecayScale(name, depth, layerDecay), ParameterGroups.IsNoDecay(name, parameter));
            if (!groups.TryGetValue(key, out var list))
            {
                groups[key] = list = new List<(string, Parameter)>();
            }

            list.Add((name, parameter));
        }

        return groups.Select(g => new FineTuneParameterGroup(g.Value, g.Key.Scale, g.Key.NoDecay ? 0.0 : weightDecay)).ToList();
    }

    private static ImageClassifier CreateModel(VisionTransformerEncoder source, BootMaeArchitecture architecture, int numClasses, bool linearProbe, int sourceBlock)
    {
        var encoder = new VisionTransformerEncoder(architecture);
        var model = new ImageClassifier(encoder, numClasses, linearProbe, sourceBlock);
        try
        {
            EncoderWeights.CopyInto(source, encoder, "the encoder");
            // Decide what trains. The fixed sin-cos PE never does; the final LN is replaced by identity, so it gets no gradient.
            foreach (var (name, parameter) in model.named_parameters())
            {
                bool trains = linearProbe
                    ? name.StartsWith("classifier.head.", StringComparison.Ordinal)
                    : name != "encoder.pos_embed" && !name.StartsWith("encoder.norm.", StringComparison.Ordinal);
                parameter.requires_grad = trains;
            }

            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static Device ResolveDevice(BootMaeDevice requested, bool fallbackToCpu, Action<string>? log)
    {
        switch (requested)
        {
            case BootMaeDevice.Cpu:
                return CPU;
            case BootMaeDevice.Cuda when cuda.is_available():
                return CUDA;
            case BootMaeDevice.Cuda when fallbackToCpu:
                log?.Invoke("Device Cuda was requested but no CUDA device is usable (CPU-only TorchSharp runtime or no GPU); training on the CPU.");
                return CPU;
            case BootMaeDevice.Cuda:
                throw new InvalidOperationException("Device Cuda was requested but no CUDA device is usable. Reference the TorchSharp-cuda runtime (BootMaeTorchRuntime=cuda), or set FallbackToCpu.");
            default:
                return cuda.is_available() ? CUDA : CPU;
        }
    }

    private static Dictionary<string, Tensor> Snapshot(nn.Module model)
    {
        using var scope = NewDisposeScope();
        return model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().clone().DetachFromDisposeScope());
    }

    private static void CopyState(nn.Module model, IReadOnlyDictionary<string, Tensor> weights, string source)
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


    private sealed record ClassifierHeader(string Format, int Version, BootMaeArchitecture Architecture, int NumberOfClasses,
        string HeadKind, int SourceBlock, long PayloadLength, string PayloadSha256);

    // One training run; owns the optimizer, generators and best-model snapshot, and disposes them.
    private sealed class Trainer
    {
        private readonly ImageClassifier _model;
        private readonly int _numClasses;
        private readonly IImageBatchSource _train;
        private readonly IImageBatchSource? _validation;
        private readonly FineTuneSettings _s;
        private readonly Action<BootMaeTrainingMetrics>? _callback;
        private readonly Action<string>? _log;
        private readonly Device _device;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _step;
        private long _totalSteps;
        private double _lastLearningRate;
        private string _fingerprint = "";
        private OwnedAdamW? _optimizer;

        // Where the run stands: the epoch, the batches of it consumed (skipped ones included), and its running sums
        // (on the device; read only when reporting or checkpointing, as a read forces a GPU sync).
        private TrainingPosition _position = new(0, 0, 0, 0, 0);
        private Tensor? _epochLoss;
        private Tensor? _epochCorrect;
        private long _epochImages;

        // The NaN/Inf guard without a GPU sync per step: a non-finite loss makes the running sum non-finite for good,
        // and the sum is read anyway at every report, checkpoint and epoch end; only then, and only when it is not
        // finite, is each batch's loss (kept on the device) read to name the first bad step.
        private Tensor? _batchLosses;
        private long[] _batchSteps = Array.Empty<long>();
        private double[] _batchLearningRates = Array.Empty<double>();
        private int _epoch;
        private string? _lastCheckpoint;

        // Early stopping and the best epoch.
        private Dictionary<string, Tensor>? _best;
        private int _bestEpoch = -1;
        private double _bestLoss = double.PositiveInfinity;
        private int _epochsSinceBest;
        private int _lastCompletedEpoch = -1;

        public Trainer(ImageClassifier model, int numClasses, IImageBatchSource train, IImageBatchSource? validation, FineTuneSettings settings,
            Action<BootMaeTrainingMetrics>? callback, Action<string>? log, Device device)
        {
            _model = model;
            _numClasses = numClasses;
            _train = train;
            _validation = validation;
            _s = settings;
            _callback = callback;
            _log = log;
            _device = device;
        }

        public void Run(CancellationToken token)
        {
            long stepsPerEpoch = _train.Count is { } n
                ? (n + _s.BatchSize - 1) / _s.BatchSize
                : _train.ReadEpoch(0, _s.BatchSize, token).LongCount();
            if (stepsPerEpoch == 0)
            {
                throw new InvalidOperationException("The training set is empty.");
            }

            _totalSteps = Math.Min(stepsPerEpoch * _s.MaxEpochs, _s.MaxSteps ?? long.MaxValue);
            var schedule = new Schedules(_totalSteps, _s.LearningRate, _s.MinLearningRate, _s.WarmupFraction, 0, 1, 0, 0, 0, 0, 0);
            var groups = BuildParameterGroups(_model, _s.LayerDecay, _s.WeightDecay);
            using var dropPathGenerator = new Generator((ulong)Seeds.Derive(_s.Seed, 0, stream: 2));
            using var optimizer = new OwnedAdamW(
                groups.Select(g => new OwnedAdamW.ParamGroup(g.Parameters.Select(p => p.Parameter), _s.LearningRate * g.LearningRateScale, g.WeightDecay, Beta1, Beta2, Epsilon)));
            _optimizer = optimizer;
            var optimizerGroups = optimizer.ParamGroups.ToList();
            if (!_model.IsLinearProbe)
            {
                _model.Encoder.SetDropPath(_s.DropPathRate, dropPathGenerator);
            }

            using var epochLoss = zeros(1, dtype: ScalarType.Float64, device: _device);
            using var epochCorrect = zeros(1, dtype: ScalarType.Int64, device: _device);
            using var batchLosses = zeros(stepsPerEpoch, dtype: ScalarType.Float64, device: _device);
            (_epochLoss, _epochCorrect, _batchLosses) = (epochLoss, epochCorrect, batchLosses);
            (_batchSteps, _batchLearningRates) = (new long[stepsPerEpoch], new double[stepsPerEpoch]);
            _fingerprint = Fingerprint();
            _position = new TrainingPosition(0, 0, 0, _totalSteps, _s.Seed);
            // The best-epoch snapshot lives outside any dispose scope: free it on every path, a throwing epoch or resume included.
            try
            {
                if (_s.ResumeFromCheckpoint && FineTuneCheckpoint.FindLatestValid(_s.CheckpointDirectory!, _model.Encoder.Architecture, _fingerprint, _log) is { } found)
                {
                    Restore(found.Path, found.Position);
                }

                var start = _position;
                _log?.Invoke($"{(_model.IsLinearProbe ? "Linear probe" : "Fine-tuning")} of a {_model.Encoder.Depth}-block encoder on features of block {_model.SourceBlock}: " +
                    $"{_totalSteps} steps ({stepsPerEpoch} per epoch), {groups.Sum(g => g.Parameters.Count)} trained tensors in {groups.Count} groups, device {_device.type}.");

                bool Stopped() => _s.EarlyStoppingPatience is { } patience && _epochsSinceBest >= patience;
                try
                {
                    // A checkpoint taken after the last step but before its epoch was validated still has that epoch to
                    // finish; one taken after early stopping has nothing left to do.
                    for (int epoch = start.Epoch; epoch < _s.MaxEpochs && (_step < _totalSteps || (epoch == start.Epoch && start.StepInEpoch > 0)) && !Stopped(); epoch++)
                    {
                        double trainLoss = RunEpoch(epoch, epoch == start.Epoch ? start.StepInEpoch : 0, schedule, optimizerGroups, groups, dropPathGenerator, token);
                        double monitored = trainLoss;
                        if (_validation is not null)
                        {
                            monitored = Validate(epoch, token);
                        }

                        _lastCompletedEpoch = epoch;
                        if (monitored < _bestLoss - _s.EarlyStoppingMinDelta)
                        {
                            _bestLoss = monitored;
                            _bestEpoch = epoch;
                            _epochsSinceBest = 0;
                            if (_s.ReturnBestModel)
                            {
                                DisposeAll(_best);
                                _best = null;
                                _best = Snapshot(_model);
                            }
                        }
                        else
                        {
                            _epochsSinceBest++;
                        }

                        // A finished epoch resumes at the start of the next one, with fresh sums.
                        _position = new TrainingPosition(_step, epoch + 1, 0, _totalSteps, _s.Seed);
                        ResetEpochSums();
                        if (_s.CheckpointDirectory is not null && _s.CheckpointEveryNSteps is null)
                        {
                            SaveCheckpoint();
                        }

                        if (Stopped())
                        {
                            _log?.Invoke($"Early stopping after epoch {epoch}: no improvement of the {(_validation is null ? "training" : "validation")} loss for {_s.EarlyStoppingPatience} epochs (best {_bestLoss:F4} at epoch {_bestEpoch}).");
                            break;
                        }
                    }
                }
                catch (OperationCanceledException) when (token.IsCancellationRequested)
                {
                    if (_s.CheckpointDirectory is not null && _step > start.Step)
                    {
                        SaveCheckpoint();
                    }

                    if (!_s.ReturnModelOnCancellation || _step == 0)
                    {
                        throw new OperationCanceledException("Fine-tuning was cancelled.", token);
                    }

                    _log?.Invoke($"Cancelled after {_step} steps; returning the model trained so far.");
                    _lastCompletedEpoch = int.MinValue;
                }
                finally
                {
                    _model.Encoder.SetDropPath(0, null);
                    _model.eval();
                    (_epochLoss, _epochCorrect, _batchLosses, _optimizer) = (null, null, null, null);
                }

                if (_best is not null)
                {
                    if (_bestEpoch != _lastCompletedEpoch)
                    {
                        CopyState(_model, _best, "the best-epoch snapshot");
                        _log?.Invoke($"Restored the weights of epoch {_bestEpoch} (lowest {(_validation is null ? "training" : "validation")} loss {_bestLoss:F4}).");
                    }
                }
            }
            finally
            {
                DisposeAll(_best);
                _best = null;
            }
        }

        // What must not change between a checkpoint and its resume (the architecture is checked on its own).
        private string Fingerprint() => string.Join('|', new object?[]
        {
            _numClasses, _model.IsLinearProbe, _model.SourceBlock, _s.BatchSize, _s.MaxEpochs, _totalSteps, _s.Seed,
            _s.LearningRate, _s.MinLearningRate, _s.WarmupFraction, _s.WeightDecay, _s.LayerDecay, _s.DropPathRate, _s.LabelSmoothing,
            _s.MixupAlpha, _s.CutmixAlpha, _s.Augment, _s.EarlyStoppingPatience, _s.EarlyStoppingMinDelta, _s.ReturnBestModel, _validation is not null,
        }.Select(o => Convert.ToString(o, System.Globalization.CultureInfo.InvariantCulture)));

        private void Restore(string path, TrainingPosition position)
        {
            var (progress, best) = FineTuneCheckpoint.Load(path, _model, _optimizer!);
            _step = position.Step;
            _position = position;
            (_bestLoss, _bestEpoch, _epochsSinceBest, _lastCompletedEpoch) =
                (progress.BestLoss ?? double.PositiveInfinity, progress.BestEpoch, progress.EpochsSinceBest, progress.LastCompletedEpoch);
            using var lossSum = progress.EpochLossSum.ToScalar();
            using var correct = progress.EpochCorrect.ToScalar();
            _epochLoss!.fill_(lossSum);
            _epochCorrect!.fill_(correct);
            _epochImages = progress.EpochImages;
            _best = best;
            _log?.Invoke($"Resumed from '{path}' at step {position.Step} (epoch {position.Epoch}).");
        }

        private void SaveCheckpoint()
        {
            double lossSum = _epochLoss!.item<double>();

            // Never save the weights a non-finite step produced; the last good checkpoint stays.
            ThrowIfNotFinite(lossSum);
            var progress = new FineTuneProgress(double.IsFinite(_bestLoss) ? _bestLoss : null, _bestEpoch, _epochsSinceBest, _lastCompletedEpoch,
                lossSum, _epochCorrect!.item<long>(), _epochImages, _best is not null);
            var path = FineTuneCheckpoint.Save(_s.CheckpointDirectory!, _position, _model.Encoder.Architecture, _fingerprint,
                _model, _optimizer!, progress, _best, _s.CheckpointsToKeep);
            _lastCheckpoint = path;
            _log?.Invoke($"Checkpoint written: '{path}' (step {_position.Step}).");
        }

        private void ThrowIfNotFinite(double lossSum)
        {
            if (double.IsFinite(lossSum))
            {
                return;
            }

            // The rare path: one read of this epoch's per-batch losses finds the first bad batch.
            var losses = _batchLosses!.cpu().data<double>().ToArray();
            int batch = Array.FindIndex(losses, l => !double.IsFinite(l));
            string where = batch < 0
                ? $"in epoch {_epoch}"
                : string.Format(System.Globalization.CultureInfo.InvariantCulture,
                    "{0} at step {1} (epoch {2}, batch {3} of the epoch: images {4}..{5} in its reading order, learning rate {6:E2})",
                    losses[batch], _batchSteps[batch], _epoch, batch, (long)batch * _s.BatchSize, ((long)(batch + 1) * _s.BatchSize) - 1, _batchLearningRates[batch]);
            throw new BootMaeTrainingException($"The fine-tuning loss became {where}. Lower LearningRate or check the input images (a NaN or infinite pixel gives this)." +
                (_lastCheckpoint is not null ? $" The last good checkpoint is '{_lastCheckpoint}'."
                    : _s.CheckpointDirectory is not null ? $" No checkpoint of this run was written before it; earlier ones in '{_s.CheckpointDirectory}' are untouched."
                    : " Set CheckpointDirectory to keep checkpoints."));
        }

        private void ResetEpochSums()
        {
            OwnedTensors.Zero(_epochLoss!);
            OwnedTensors.Zero(_epochCorrect!);
            _epochImages = 0;
        }

        private double RunEpoch(int epoch, long skip, Schedules schedule, List<OwnedAdamW.ParamGroup> optimizerGroups, List<FineTuneParameterGroup> groups,
            Generator dropPathGenerator, CancellationToken token)
        {
            _model.train();
            if (_model.IsLinearProbe)
            {
                // The frozen encoder stays deterministic; only the head's BatchNorm collects batch statistics.
                _model.Encoder.eval();
            }

            var lossSum = _epochLoss!;
            var correctSum = _epochCorrect!;
            _epoch = epoch;
            OwnedTensors.Zero(_batchLosses!);
            long windowImages = 0, inEpoch = 0;
            double windowLoss = skip > 0 ? lossSum.item<double>() : 0, windowCorrect = skip > 0 ? correctSum.item<long>() : 0;
            var windowStart = _clock.Elapsed;
            bool smallBatchLogged = false;

            foreach (var batch in _train.ReadEpoch(epoch, _s.BatchSize, token))
            {
                if (inEpoch < skip)
                {
                    inEpoch++;
                    continue;
                }

                token.ThrowIfCancellationRequested();
                if (_step >= _totalSteps)
                {
                    break;
                }

                inEpoch++;
                if (_model.IsLinearProbe && batch.Count < 2)
                {
                    // BatchNorm cannot normalise one sample in training mode.
                    if (!smallBatchLogged)
                    {
                        _log?.Invoke("Skipped a training batch of one image (the probe's BatchNorm needs at least two).");
                        smallBatchLogged = true;
                    }

                    _position = new TrainingPosition(_step, epoch, inEpoch, _totalSteps, _s.Seed);
                    continue;
                }

                var labels = CheckLabels(batch, "training");
                _lastLearningRate = schedule.LearningRate(_step);
                for (int i = 0; i < optimizerGroups.Count; i++)
                {
                    optimizerGroups[i].LearningRate = _lastLearningRate * groups[i].LearningRateScale;
                }

                // Every draw of the step comes from (seed, step), in independent streams per use, so a resumed run
                // repeats the straight one and turning one augmentation on does not shift the others' draws.
                var crop = new Random(Seeds.Derive(_s.Seed, _step, stream: 1));
                var mix = new Random(Seeds.Derive(_s.Seed, _step, stream: 3));
                dropPathGenerator.manual_seed(Seeds.Derive(_s.Seed, _step, stream: 2));
                using (var scope = NewDisposeScope())
                {
                    var x = InputNormalization.Input(batch.Pixels, batch.Count, _model.Encoder.Architecture, _device);
                    var y = tensor(labels, new long[] { batch.Count }).to(_device);
                    if (_s.Augment)
                    {
                        x = FineTuneAugmentation.RandomResizedCropFlip(x, crop);
                    }

                    var targets = FineTuneAugmentation.SmoothedTargets(y, _numClasses, _s.LabelSmoothing);
                    if (_s.MixupAlpha > 0 || _s.CutmixAlpha > 0)
                    {
                        (x, targets) = FineTuneAugmentation.MixupCutmix(x, targets, _s.MixupAlpha, _s.CutmixAlpha, mix);
                    }

                    var logits = _model.forward(x);
                    var loss = (-(targets * nn.functional.log_softmax(logits, 1))).sum(1).mean();
                    _optimizer!.ZeroGrad();
                    loss.backward();
                    _optimizer.Step();
                    _s.AfterStep?.Invoke(new FineTuneStepTrace(_step, _lastLearningRate, groups, optimizerGroups));
                    using (no_grad())
                    {
                        using var count = batch.Count.ToScalar();
                        var detached = loss.detach().to(ScalarType.Float64);
                        lossSum.add_(detached.mul(count), TorchScalars.One);
                        if (inEpoch - 1 < _batchSteps.Length)
                        {
                            _batchLosses!.narrow(0, inEpoch - 1, 1).copy_(detached.reshape(1));
                            (_batchSteps[inEpoch - 1], _batchLearningRates[inEpoch - 1]) = (_step, _lastLearningRate);
                        }
                        correctSum.add_(logits.argmax(1).eq(y).sum(), TorchScalars.One);
                    }
                }

                _step++;
                _epochImages += batch.Count;
                windowImages += batch.Count;
                _position = new TrainingPosition(_step, epoch, inEpoch, _totalSteps, _s.Seed);
                if (_s.LogEveryNSteps > 0 && _step % _s.LogEveryNSteps == 0)
                {
                    double loss = lossSum.item<double>(), correct = correctSum.item<long>();
                    ThrowIfNotFinite(loss);
                    Report(BootMaeDataset.Train, epoch, isEpochEnd: false, (loss - windowLoss) / windowImages, (correct - windowCorrect) / windowImages, windowImages, windowStart);
                    (windowLoss, windowCorrect, windowImages, windowStart) = (loss, correct, 0, _clock.Elapsed);
                }

                if (_s.CheckpointDirectory is not null && _s.CheckpointEveryNSteps is { } every && _step % every == 0)
                {
                    SaveCheckpoint();
                }
            }

            if (_epochImages == 0)
            {
                throw new InvalidOperationException($"Epoch {epoch} of the training set gave no usable batch.");
            }

            ThrowIfNotFinite(lossSum.item<double>());
            double epochLoss = lossSum.item<double>() / _epochImages;
            Report(BootMaeDataset.Train, epoch, isEpochEnd: true, epochLoss, (double)correctSum.item<long>() / _epochImages, windowImages, windowStart);
            return epochLoss;
        }

        // Plain cross-entropy (no smoothing, as the official evaluation) and accuracy over the whole validation set.
        private double Validate(int epoch, CancellationToken token)
        {
            _model.eval();
            var start = _clock.Elapsed;
            double lossSum = 0;
            long correct = 0, images = 0;
            using (inference_mode())
            {
                foreach (var batch in _validation!.ReadEpoch(epoch, _s.BatchSize, token))
                {
                    token.ThrowIfCancellationRequested();
                    var labels = CheckLabels(batch, "validation");
                    using var scope = NewDisposeScope();
                    var y = tensor(labels, new long[] { batch.Count }).to(_device);
                    var logits = _model.forward(InputNormalization.Input(batch.Pixels, batch.Count, _model.Encoder.Architecture, _device));
                    lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
                    correct += logits.argmax(1).eq(y).sum().item<long>();
                    images += batch.Count;
                }
            }

            if (images == 0)
            {
                throw new InvalidOperationException("The validation set is empty.");
            }

            double loss = lossSum / images;
            Report(BootMaeDataset.Validation, epoch, isEpochEnd: true, loss, (double)correct / images, images, start);
            return loss;
        }

        private long[] CheckLabels(ImageBatch batch, string set)
        {
            if (batch.Labels is null)
            {
                throw new InvalidOperationException($"The {set} set has no labels; classification needs a 0-based label per image.");
            }

            var labels = new long[batch.Count];
            for (int i = 0; i < batch.Count; i++)
            {
                int label = batch.Labels[i];
                if (label < 0 || label >= _numClasses)
                {
                    throw new InvalidOperationException($"A {set} label is {label}, outside [0, {_numClasses - 1}] for {_numClasses} classes.");
                }

                labels[i] = label;
            }

            return labels;
        }

        private void Report(BootMaeDataset dataset, int epoch, bool isEpochEnd, double loss, double accuracy, long windowImages, TimeSpan windowStart)
        {
            var elapsed = _clock.Elapsed;
            double seconds = (elapsed - windowStart).TotalSeconds;
            var metrics = new BootMaeTrainingMetrics
            {
                Dataset = dataset,
                Epoch = epoch,
                Step = _step,
                TotalSteps = _totalSteps,
                IsEpochEnd = isEpochEnd,
                Loss = (float)loss,
                Accuracy = (float)accuracy,
                LearningRate = _lastLearningRate,
                ImagesPerSecond = seconds > 0 ? windowImages / seconds : 0,
                Elapsed = elapsed,
                Eta = _step > 0 ? TimeSpan.FromTicks((long)(elapsed.Ticks * (double)(_totalSteps - _step) / _step)) : null,
            };
            _log?.Invoke(metrics.ToString());
            _callback?.Invoke(metrics);
        }

        private static void DisposeAll(Dictionary<string, Tensor>? tensors)
        {
            if (tensors is null)
            {
                return;
            }

            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }
        }
    }
}

/// <summary>One AdamW group of fine-tuning: its parameters, lr multiplier (layer decay) and weight decay.</summary>
internal sealed record FineTuneParameterGroup(List<(string Name, Parameter Parameter)> Parameters, double LearningRateScale, double WeightDecay);
