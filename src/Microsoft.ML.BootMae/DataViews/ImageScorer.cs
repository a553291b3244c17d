using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>How a new column is served from a row's block of scores.</summary>
internal enum ScoredColumnKind
{
    /// <summary>The whole block as a float vector (embeddings, class scores).</summary>
    Vector,

    /// <summary>1 + the index of the largest value, as a key (predicted label).</summary>
    ArgMaxKey,
}

/// <summary>A column a BootMAE transformer adds.</summary>
internal sealed record ScoredColumn(string Name, DataViewType Type, DataViewSchema.Annotations Annotations, ScoredColumnKind Kind);

/// <summary>What the batched data view and the row mapper need from a transformer.</summary>
internal interface IImageScorer
{
    /// <summary>The image column read from the input.</summary>
    string ImageColumnName { get; }

    /// <summary>Target size and channels of decoded images.</summary>
    BootMaeArchitecture Architecture { get; }

    /// <summary>Images per forward pass in <c>Transform</c>.</summary>
    int BatchSize { get; }

    /// <summary>Largest width·height of an encoded image that <c>Transform</c> decodes (<c>MaxImagePixels</c>), checked on its header.</summary>
    long MaxImagePixels { get; }

    /// <summary>Floats produced per image.</summary>
    int OutputSize { get; }

    /// <summary>Name used in log lines (the catalog method that makes the transformer).</summary>
    string ComponentName { get; }

    /// <summary>Where log lines go (the MLContext's environment); null logs nothing.</summary>
    Microsoft.ML.Runtime.IHostEnvironment? LogEnvironment { get; }

    /// <summary>Runs the network on <paramref name="count"/> images; thread-safe.</summary>
    float[] Score(float[] pixels, int count);

    /// <summary>The added columns for a given input schema (annotations may depend on it).</summary>
    IReadOnlyList<ScoredColumn> GetOutputColumns(DataViewSchema inputSchema);
}

/// <summary>Helpers shared by the batched data view and the row mapper.</summary>
internal static class ImageScoring
{
    /// <summary>Input columns followed by the added ones; an input column with an added column's name becomes hidden.</summary>
    internal static DataViewSchema BuildOutputSchema(DataViewSchema input, IReadOnlyList<ScoredColumn> added)
    {
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(input);
        foreach (var column in added)
        {
            builder.AddColumn(column.Name, column.Type, column.Annotations);
        }

        return builder.ToSchema();
    }

    /// <summary>Decodes <paramref name="count"/> staged images in parallel into one [B, C, H, W] array.</summary>
    internal static float[] DecodeBatch(RawImage[] staged, int count, ImageColumnInfo column, IImageScorer scorer)
    {
        var architecture = scorer.Architecture;
        long maxPixels = scorer.MaxImagePixels;
        int per = ImageDecoder.PixelsPerImage(architecture);
        var pixels = new float[count * per];
        if (count == 1)
        {
            ImageDecoder.Decode(staged[0], column, architecture.ImageSize, architecture.Channels, pixels, maxImagePixels: maxPixels);
            return pixels;
        }

        try
        {
            Parallel.For(0, count, i =>
                ImageDecoder.Decode(staged[i], column, architecture.ImageSize, architecture.Channels, pixels.AsSpan(i * per, per), maxImagePixels: maxPixels));
        }
        catch (AggregateException ex) when (ex.InnerExceptions.FirstOrDefault(e => e is InvalidDataException) is { } bad)
        {
            // Report the undecodable row itself, not the parallel loop's wrapper.
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(bad).Throw();
        }

        return pixels;
    }

    /// <summary>A getter over the current row's block of a score buffer.</summary>
    internal static Delegate MakeGetter(ScoredColumn column, int outputSize, Func<(float[] Buffer, int Row)> current)
    {
        if (column.Kind == ScoredColumnKind.ArgMaxKey)
        {
            ValueGetter<uint> key = (ref uint value) =>
            {
                var (buffer, row) = current();
                var block = buffer.AsSpan(row * outputSize, outputSize);
                int best = 0;
                for (int i = 1; i < block.Length; i++)
                {
                    if (block[i] > block[best])
                    {
                        best = i;
                    }
                }

                value = (uint)best + 1;
            };
            return key;
        }

        ValueGetter<VBuffer<float>> vector = (ref VBuffer<float> value) =>
        {
            var (buffer, row) = current();
            var editor = VBufferEditor.Create(ref value, outputSize);
            buffer.AsSpan(row * outputSize, outputSize).CopyTo(editor.Values);
            value = editor.Commit();
        };
        return vector;
    }

    /// <summary>Casts a getter to the type the caller asked for, with ML.NET's style of error.</summary>
    internal static ValueGetter<TValue> Cast<TValue>(Delegate getter, DataViewSchema.Column column) =>
        getter as ValueGetter<TValue> ?? throw new InvalidOperationException(
            $"Invalid TValue in GetGetter: '{typeof(TValue)}', expected type: '{column.Type.RawType}' for column '{column.Name}'.");
}
