using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.BootMae.Persistence;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Adds a BootMAE embedding column to an image column. Produced by
/// <see cref="BootMaeCatalog.BootMaePretrain(TransformsCatalog, BootMaePretrainingEstimator.Options)"/> and
/// <see cref="BootMaeCatalog.BootMaeFeaturize(TransformsCatalog, BootMaeFeaturizingEstimator.Options)"/>.
/// </summary>
/// <remarks>
/// <format type="text/markdown"><![CDATA[
/// | Input column | Output column |
/// | -- | -- |
/// | `VarVector<Byte>` (LoadRawImageBytes), `Image` (LoadImages) or `Vector<Single, C, H, W>` (ExtractPixels) | `Vector<Single, D>` (Mean or Cls pooling) or `Vector<Single, N, D>` (Tokens) |
///
/// `Transform` is lazy and batched; `PredictionEngine` scores one row at a time. Several prediction engines on one
/// model can run on different threads; note that a `PredictionEngine` disposes its model when it is disposed unless
/// it is created with `new PredictionEngineOptions { OwnsTransformer = false }`. Save with `mlContext.Model.SaveBootMae`, load with `LoadBootMae`.
/// Append `AppendCacheCheckpoint` after this transformer when a downstream trainer makes many passes.
/// ]]></format>
/// </remarks>
public sealed class BootMaeEncoderTransformer : ITransformer, IDisposable, IImageScorer, IBootMaeStage
{
    internal const string Kind = "encoder";
    private readonly bool _ownsEncoder;
    private long _forwardPasses;
    private long _imagesScored;
    private bool _disposed;

    internal BootMaeEncoderTransformer(BootMaeEncoder encoder, bool ownsEncoder, string imageColumnName, string outputColumnName,
        BootMaePooling pooling, int? sourceBlock, BootMaePrecision precision, int batchSize, long maxImagePixels)
    {
        Encoder = encoder;
        _ownsEncoder = ownsEncoder;
        ImageColumnName = imageColumnName;
        OutputColumnName = outputColumnName;
        Pooling = pooling;
        var architecture = encoder.Architecture;
        SourceBlock = sourceBlock ?? architecture.Depth - 1;
        if (SourceBlock < 0 || SourceBlock >= architecture.Depth)
        {
            throw new ArgumentOutOfRangeException(nameof(sourceBlock), sourceBlock,
                $"SourceBlock must be a 0-based encoder block in [0, {architecture.Depth - 1}].");
        }

        Precision = precision;
        BatchSize = batchSize > 0 ? batchSize : throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "BatchSize must be positive.");
        MaxImagePixels = ImageDecoder.CheckMaxImagePixels(maxImagePixels, nameof(maxImagePixels));
    }

    /// <summary>The encoder. It belongs to this transformer when the transformer was trained or loaded; dispose the transformer, not the encoder.</summary>
    public BootMaeEncoder Encoder { get; }

    /// <summary>The input image column.</summary>
    public string ImageColumnName { get; }

    /// <summary>The added embedding column.</summary>
    public string OutputColumnName { get; }

    /// <summary>How token outputs become the embedding.</summary>
    public BootMaePooling Pooling { get; }

    /// <summary>0-based encoder block whose output is pooled (the last block unless set).</summary>
    public int SourceBlock { get; }

    /// <summary>Numeric precision of inference.</summary>
    public BootMaePrecision Precision { get; }

    /// <summary>Images per forward pass in <see cref="Transform(IDataView)"/>.</summary>
    public int BatchSize { get; }

    /// <summary>
    /// Largest encoded image, as width × height, that <see cref="Transform(IDataView)"/> decodes; larger ones (checked on
    /// the file's header, before any pixel memory) fail naming the column, row and file. Set by the options that made
    /// this transformer (<c>MaxImagePixels</c> of the featurizer or trainer, default 50,000,000) and kept by
    /// <c>SaveBootMae</c>.
    /// </summary>
    public long MaxImagePixels { get; }

    /// <summary>Dimensions of the output column: [D], or [N, D] for <see cref="BootMaePooling.Tokens"/>.</summary>
    public IReadOnlyList<int> OutputDimensions => Pooling == BootMaePooling.Tokens
        ? new[] { Encoder.Architecture.NumPatches, Encoder.Architecture.EmbedDim }
        : new[] { Encoder.Architecture.EmbedDim };

    /// <inheritdoc />
    public bool IsRowToRowMapper => true;

    BootMaeArchitecture IImageScorer.Architecture => Encoder.Architecture;

    int IImageScorer.OutputSize => OutputDimensions.Aggregate(1, (a, b) => a * b);

    string IBootMaeStage.StageKind => Kind;

    string IImageScorer.ComponentName => "BootMaeFeaturize";

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

    /// <summary>Encoder forward passes run by <see cref="Transform(IDataView)"/> cursors and prediction engines so far (tests and benchmarks).</summary>
    internal long ForwardPasses => Interlocked.Read(ref _forwardPasses);

    /// <summary>Images those forward passes encoded.</summary>
    internal long ImagesScored => Interlocked.Read(ref _imagesScored);

    float[] IImageScorer.Score(float[] pixels, int count)
    {
        ThrowIfDisposed();
        Interlocked.Increment(ref _forwardPasses);
        Interlocked.Add(ref _imagesScored, count);
        return Encoder.Embed(pixels, count, Pooling, SourceBlock, Precision);
    }

    IReadOnlyList<ScoredColumn> IImageScorer.GetOutputColumns(DataViewSchema inputSchema)
    {
        var type = new VectorDataViewType(NumberDataViewType.Single, OutputDimensions.ToArray());
        return new[] { new ScoredColumn(OutputColumnName, type, new DataViewSchema.Annotations.Builder().ToAnnotations(), ScoredColumnKind.Vector) };
    }

    JsonObject IBootMaeStage.GetStageConfig() => new()
    {
        ["architecture"] = JsonSerializer.SerializeToNode(Encoder.Architecture),
        ["imageColumnName"] = ImageColumnName,
        ["outputColumnName"] = OutputColumnName,
        ["pooling"] = Pooling.ToString(),
        ["sourceBlock"] = SourceBlock,
        ["precision"] = Precision.ToString(),
        ["batchSize"] = BatchSize,
        ["maxImagePixels"] = MaxImagePixels,
    };

    void IBootMaeStage.SaveWeights(Stream stream) => Encoder.Save(stream);

    /// <summary>Rebuilds a transformer saved by <see cref="BootMaeModelArchive"/>.</summary>
    internal static BootMaeEncoderTransformer FromStage(JsonObject config, Stream weights)
    {
        var architecture = BootMaeModelArchive.ReadArchitecture(config);
        long maxImagePixels = BootMaeModelArchive.ReadMaxImagePixels(config);
        var encoder = BootMaeEncoder.Load(weights);
        if (encoder.Architecture != architecture)
        {
            encoder.Dispose();
            throw new InvalidDataException(
                $"The saved encoder's weights are for {encoder.Architecture}, but the model's manifest says {architecture}. The model file is inconsistent; save it again with SaveBootMae.");
        }

        return new BootMaeEncoderTransformer(encoder, ownsEncoder: true,
            (string)config["imageColumnName"]!, (string)config["outputColumnName"]!,
            Enum.Parse<BootMaePooling>((string)config["pooling"]!), (int)config["sourceBlock"]!,
            Enum.Parse<BootMaePrecision>((string)config["precision"]!), (int)config["batchSize"]!, maxImagePixels);
    }

    /// <summary>Frees the encoder when this transformer owns it (trained or loaded).</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_ownsEncoder)
        {
            Encoder.Dispose();
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);
}
