using Microsoft.ML.BootMae.DataViews;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Embeds images with a pretrained <see cref="BootMaeEncoder"/>. Fitting only checks the schema; it trains nothing.
/// Create it with <see cref="BootMaeCatalog.BootMaeFeaturize(TransformsCatalog, BootMaeEncoder, string, string, BootMaePooling)"/>.
/// </summary>
/// <remarks>
/// <format type="text/markdown"><![CDATA[
/// | Input column | Output column |
/// | -- | -- |
/// | `VarVector<Byte>` (LoadRawImageBytes), `Image` (LoadImages) or `Vector<Single, C, H, W>` (ExtractPixels) | `Vector<Single, D>`, or `Vector<Single, N, D>` for `Tokens` |
///
/// The official linear probe of a 12-block ViT keeps its first 10 blocks (`SourceBlock = 9`, 0-based) with mean pooling.
/// The encoder stays the caller's: disposing the transformer does not dispose it.
/// ]]></format>
/// </remarks>
public sealed class BootMaeFeaturizingEstimator : IEstimator<BootMaeEncoderTransformer>
{
    private readonly Options _options;
    private readonly Microsoft.ML.Runtime.IHostEnvironment? _env;

    internal BootMaeFeaturizingEstimator(Options options, Microsoft.ML.Runtime.IHostEnvironment? env = null)
    {
        _env = env;
        ArgumentNullException.ThrowIfNull(options);
        if (options.Encoder is null)
        {
            throw new ArgumentNullException(nameof(options), "BootMaeFeaturizingEstimator.Options.Encoder is required: pass a pretrained BootMaeEncoder (BootMaeEncoder.Load, FromPyTorch, or a pretraining transformer's Encoder).");
        }

        if (options.BatchSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.BatchSize, "BatchSize must be positive.");
        }

        var depth = options.Encoder.Architecture.Depth;
        if (options.SourceBlock is { } block && (block < 0 || block >= depth))
        {
            throw new ArgumentOutOfRangeException(nameof(options), block, $"SourceBlock must be a 0-based encoder block in [0, {depth - 1}].");
        }

        ImageDecoder.CheckMaxImagePixels(options.MaxImagePixels, nameof(options));
        _options = options;
    }

    /// <summary>Settings of <see cref="BootMaeFeaturizingEstimator"/>.</summary>
    public sealed class Options
    {
        /// <summary>Default values.</summary>
        internal static class Defaults
        {
            internal const string ImageColumnName = "Image";
            internal const string OutputColumnName = "Features";
            internal const BootMaePooling Pooling = BootMaePooling.Mean;
            internal const int BatchSize = 32;
        }

        /// <summary>The pretrained encoder (required). Default <c>null</c>.</summary>
        public BootMaeEncoder? Encoder;

        /// <summary>The image column (encoded bytes, Image or pixel vector). Default <c>"Image"</c>.</summary>
        public string ImageColumnName = Defaults.ImageColumnName;

        /// <summary>The added embedding column. Default <c>"Features"</c>.</summary>
        public string OutputColumnName = Defaults.OutputColumnName;

        /// <summary>How token outputs become the embedding. Default <see cref="BootMaePooling.Mean"/>.</summary>
        public BootMaePooling Pooling = Defaults.Pooling;

        /// <summary>0-based encoder block whose output is pooled. Default <c>null</c>: the last block (with the final norm).</summary>
        public int? SourceBlock;

        /// <summary>Numeric precision of inference; bfloat16 halves memory and is faster on recent GPUs. Default <see cref="BootMaePrecision.Float32"/>.</summary>
        public BootMaePrecision Precision = BootMaePrecision.Float32;

        /// <summary>Images per forward pass in <c>Transform</c>. Default 32.</summary>
        public int BatchSize = Defaults.BatchSize;

        /// <summary>
        /// Largest encoded image, as width × height, that <c>Transform</c> decodes. Files are checked against it from
        /// their header (PNG IHDR, JPEG SOF, …) before any pixel memory is allocated, so a tiny file that declares a huge
        /// image (a decompression bomb) fails with a message naming the column, row and file. The transformer keeps it
        /// (<see cref="BootMaeEncoderTransformer.MaxImagePixels"/>), also through <c>SaveBootMae</c>. Default 50,000,000.
        /// </summary>
        public long MaxImagePixels = ImageDecoder.DefaultMaxImagePixels;
    }

    /// <summary>Checks the input schema and returns the transformer (no training).</summary>
    public BootMaeEncoderTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        BootMaeRuntime.EnsureTorchLoaded();
        ImageColumn.Resolve(input.Schema, _options.ImageColumnName, nameof(input));
        return new BootMaeEncoderTransformer(_options.Encoder!, ownsEncoder: false, _options.ImageColumnName, _options.OutputColumnName,
            _options.Pooling, _options.SourceBlock, _options.Precision, _options.BatchSize, _options.MaxImagePixels)
        {
            LogEnvironment = _env,
        };
    }

    /// <summary>The input shape plus the embedding column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ImageColumn.CheckShape(inputSchema, _options.ImageColumnName);
        return SchemaShapeFactory.Merge(inputSchema, new[] { SchemaShapeFactory.FloatVector(_options.OutputColumnName) });
    }
}
