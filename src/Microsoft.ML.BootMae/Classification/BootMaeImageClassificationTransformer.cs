using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.BootMae.Classification;
using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.BootMae.Persistence;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Classifies images with a fine-tuned (or linear-probed) BootMAE encoder. Produced by
/// <see cref="BootMaeCatalog.BootMaeImageClassification(MulticlassClassificationCatalog.MulticlassClassificationTrainers, BootMaeImageClassificationTrainer.Options)"/>.
/// </summary>
/// <remarks>
/// <format type="text/markdown"><![CDATA[
/// | Output column | Type | Annotations |
/// | -- | -- | -- |
/// | `Score` | `Vector<Single, K>`: softmax probabilities | SlotNames (class names), ScoreColumnKind = MulticlassClassification, ScoreValueKind = Score, ScoreColumnSetId, TrainingLabelValues |
/// | `PredictedLabel` | `Key<UInt32, K>`: the most probable class | KeyValues of the training label |
///
/// `mlContext.MulticlassClassification.Evaluate` and `MapKeyToValue("PredictedLabel")` work on the output unchanged.
/// ]]></format>
/// </remarks>
public sealed class BootMaeImageClassificationTransformer : ITransformer, IDisposable, IImageScorer, IBootMaeStage
{
    internal const string Kind = "classifier";
    private static readonly KeyDataViewType ScoreColumnSetIdType = new(typeof(uint), int.MaxValue);
    private readonly ImageClassifierEngine _engine;
    private readonly LabelKeyValues? _keyValues;
    private bool _disposed;

    internal BootMaeImageClassificationTransformer(ImageClassifierEngine engine, BootMaeArchitecture architecture, int numberOfClasses,
        LabelKeyValues? keyValues, string imageColumnName, string labelColumnName, string scoreColumnName, string predictedLabelColumnName, int batchSize, long maxImagePixels)
    {
        _engine = engine;
        _keyValues = keyValues;
        Architecture = architecture;
        NumberOfClasses = numberOfClasses;
        ImageColumnName = imageColumnName;
        LabelColumnName = labelColumnName;
        ScoreColumnName = scoreColumnName;
        PredictedLabelColumnName = predictedLabelColumnName;
        BatchSize = batchSize;
        MaxImagePixels = ImageDecoder.CheckMaxImagePixels(maxImagePixels, nameof(maxImagePixels));
    }

    /// <summary>The network's shape.</summary>
    public BootMaeArchitecture Architecture { get; }

    /// <summary>Number of classes K.</summary>
    public int NumberOfClasses { get; }

    /// <summary>The input image column.</summary>
    public string ImageColumnName { get; }

    /// <summary>The label column the model was trained on (not needed for prediction).</summary>
    public string LabelColumnName { get; }

    /// <summary>The added score column.</summary>
    public string ScoreColumnName { get; }

    /// <summary>The added predicted-label column.</summary>
    public string PredictedLabelColumnName { get; }

    /// <summary>A copy of the fine-tuned encoder (yours to dispose), e.g. for <c>BootMaeFeaturize</c> or further training.</summary>
    public BootMaeEncoder ExtractEncoder()
    {
        ThrowIfDisposed();
        return _engine.ExtractEncoder();
    }

    /// <summary>
    /// Writes the classifier as an ONNX model (opset 17, standard operators, float32) for ML.NET's <c>ApplyOnnxModel</c>
    /// or ONNX Runtime, with no TorchSharp or libtorch at serving time.
    /// </summary>
    /// <param name="path">The <c>.onnx</c> file to write, replaced atomically. Its folder must exist.</param>
    /// <remarks>
    /// Input <c>pixels</c>: float32 <c>[batch, 3, ImageSize, ImageSize]</c>, planar RGB 0..255 (<c>ExtractPixels</c>
    /// with its defaults); the normalisation is inside the graph. Outputs: <c>scores</c>, float32 <c>[batch, K]</c>,
    /// the softmax probabilities of the <see cref="ScoreColumnName"/> column; <c>predicted</c>, int64 <c>[batch]</c>,
    /// the 0-based index of the most probable class (the <see cref="PredictedLabelColumnName"/> key minus one). The
    /// class names, in index order, are a JSON array under the metadata key <c>bootmae.classNames</c> (present when
    /// the training label had key values). The batch dimension is dynamic.
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The transformer is disposed.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    /// <exception cref="NotSupportedException">The weights are too large for a single-file ONNX model (2 GiB).</exception>
    public void ExportOnnx(string path)
    {
        if (_disposed)
        {
            throw new ObjectDisposedException(nameof(BootMaeImageClassificationTransformer), "This classifier is disposed, so it has no weights left to export. Export it before disposing it, or load the model again with LoadBootMae.");
        }

        var full = OnnxExport.BootMaeOnnxExporter.ResolveTarget(path);
        _engine.ExportOnnx(full, _keyValues?.Values);
    }

    /// <summary>Images per forward pass in <see cref="Transform(IDataView)"/>.</summary>
    public int BatchSize { get; }

    /// <summary>
    /// Largest encoded image, as width × height, that <see cref="Transform(IDataView)"/> decodes; larger ones (checked on
    /// the file's header, before any pixel memory) fail naming the column, row and file. The trainer's
    /// <c>MaxImagePixels</c> (default 50,000,000), kept by <c>SaveBootMae</c>.
    /// </summary>
    public long MaxImagePixels { get; }

    /// <inheritdoc />
    public bool IsRowToRowMapper => true;

    int IImageScorer.OutputSize => NumberOfClasses;

    string IBootMaeStage.StageKind => Kind;

    string IImageScorer.ComponentName => "BootMaeImageClassification";

    Microsoft.ML.Runtime.IHostEnvironment? IImageScorer.LogEnvironment => LogEnvironment;

    /// <summary>The MLContext environment that <see cref="Transform(IDataView)"/>'s views log to (set by the catalog that made or loaded this transformer).</summary>
    internal Microsoft.ML.Runtime.IHostEnvironment? LogEnvironment { get; set; }

    /// <inheritdoc />
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ImageColumn.Resolve(inputSchema, ImageColumnName);
        return ImageScoring.BuildOutputSchema(inputSchema, ((IImageScorer)this).GetOutputColumns(inputSchema));
    }

    /// <inheritdoc />
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        ThrowIfDisposed();
        BootMaeRuntime.EnsureTorchLoaded();
        return new BatchScoredDataView(input, this);
    }

    /// <inheritdoc />
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ThrowIfDisposed();
        BootMaeRuntime.EnsureTorchLoaded();
        return new ImageRowMapper(inputSchema, this);
    }

    /// <summary>Throws: BootMAE weights cannot travel through <c>mlContext.Model.Save</c>; use <c>SaveBootMae</c>.</summary>
    void ICanSaveModel.Save(ModelSaveContext ctx) => BootMaeModelArchive.SaveStage(ctx, this);

    float[] IImageScorer.Score(float[] pixels, int count)
    {
        ThrowIfDisposed();
        return _engine.PredictScores(pixels, count);
    }

    IReadOnlyList<ScoredColumn> IImageScorer.GetOutputColumns(DataViewSchema inputSchema)
    {
        // A new score set: one more than the largest ScoreColumnSetId already in the input, as ML.NET scorers do.
        uint setId = 1;
        foreach (var column in inputSchema)
        {
            if (column.Annotations.Schema.GetColumnOrNull("ScoreColumnSetId") is { Type: KeyDataViewType { RawType: var raw } } && raw == typeof(uint))
            {
                uint value = 0;
                column.Annotations.GetValue("ScoreColumnSetId", ref value);
                setId = Math.Max(setId, value + 1);
            }
        }

        var score = new DataViewSchema.Annotations.Builder();
        if (_keyValues is not null)
        {
            var names = _keyValues.AsSlotNames();
            score.Add("SlotNames", new VectorDataViewType(TextDataViewType.Instance, NumberOfClasses), (ref VBuffer<ReadOnlyMemory<char>> v) => names.CopyTo(ref v));
        }

        AddScoreAnnotations(score, setId, "Score");
        _keyValues?.AddTo(score, "TrainingLabelValues");

        var predicted = new DataViewSchema.Annotations.Builder();
        _keyValues?.AddTo(predicted, "KeyValues");
        AddScoreAnnotations(predicted, setId, "PredictedLabel");

        return new[]
        {
            new ScoredColumn(ScoreColumnName, new VectorDataViewType(NumberDataViewType.Single, NumberOfClasses), score.ToAnnotations(), ScoredColumnKind.Vector),
            new ScoredColumn(PredictedLabelColumnName, new KeyDataViewType(typeof(uint), NumberOfClasses), predicted.ToAnnotations(), ScoredColumnKind.ArgMaxKey),
        };
    }

    private static void AddScoreAnnotations(DataViewSchema.Annotations.Builder builder, uint setId, string valueKind)
    {
        builder.Add("ScoreColumnKind", TextDataViewType.Instance, (ref ReadOnlyMemory<char> v) => v = "MulticlassClassification".AsMemory());
        builder.Add("ScoreValueKind", TextDataViewType.Instance, (ref ReadOnlyMemory<char> v) => v = valueKind.AsMemory());
        builder.Add("ScoreColumnSetId", ScoreColumnSetIdType, (ref uint v) => v = setId);
    }

    JsonObject IBootMaeStage.GetStageConfig() => new()
    {
        ["architecture"] = JsonSerializer.SerializeToNode(Architecture),
        ["numberOfClasses"] = NumberOfClasses,
        ["keyValues"] = _keyValues?.ToJson(),
        ["imageColumnName"] = ImageColumnName,
        ["labelColumnName"] = LabelColumnName,
        ["scoreColumnName"] = ScoreColumnName,
        ["predictedLabelColumnName"] = PredictedLabelColumnName,
        ["batchSize"] = BatchSize,
    };

    void IBootMaeStage.SaveWeights(Stream stream) => _engine.Save(stream);

    /// <summary>Rebuilds a transformer saved by <see cref="BootMaeModelArchive"/>.</summary>
    internal static BootMaeImageClassificationTransformer FromStage(JsonObject config, Stream weights)
    {
        var architecture = BootMaeModelArchive.ReadArchitecture(config);
        int classes = (int)config["numberOfClasses"]!;
        long maxImagePixels = BootMaeModelArchive.ReadMaxImagePixels(config);
        var engine = ImageClassifierEngine.Load(weights, architecture, classes);
        return new BootMaeImageClassificationTransformer(engine, architecture, classes, LabelKeyValues.FromJson(config["keyValues"]),
            (string)config["imageColumnName"]!, (string)config["labelColumnName"]!, (string)config["scoreColumnName"]!,
            (string)config["predictedLabelColumnName"]!, (int)config["batchSize"]!, maxImagePixels);
    }

    /// <summary>Frees the network.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _engine.Dispose();
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);
}
