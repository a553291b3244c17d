using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// One image copied out of a row, in whichever form the column holds it. Instances are reused from row to row, so
/// their buffers only grow.
/// </summary>
internal sealed class RawImage
{
    /// <summary>Encoded file bytes (<see cref="ImageColumnKind.EncodedBytes"/>); the first <see cref="Length"/> are valid.</summary>
    public byte[] Bytes = Array.Empty<byte>();

    /// <summary>RGBA8888 pixels (<see cref="ImageColumnKind.Image"/>) or planar floats (<see cref="ImageColumnKind.Pixels"/>, in <see cref="Floats"/>).</summary>
    public float[] Floats = Array.Empty<float>();

    /// <summary>Valid length of <see cref="Bytes"/> or <see cref="Floats"/>.</summary>
    public int Length;

    /// <summary>Pixel width for <see cref="ImageColumnKind.Image"/>.</summary>
    public int Width;

    /// <summary>Pixel height for <see cref="ImageColumnKind.Image"/>.</summary>
    public int Height;

    /// <summary>Row position in the cursor, for error messages.</summary>
    public long Position;

    /// <summary>A path or other text that identifies the row, for error messages; may be null.</summary>
    public string? Source;

    /// <summary>Why the row could not be read, when the column's own getter failed (e.g. LoadImages on a bad file).</summary>
    public string? ReadError;

    /// <summary>Describes the row for an error message.</summary>
    public string Describe(string columnName) =>
        Source is null ? $"row {Position} of column '{columnName}'" : $"row {Position} of column '{columnName}' ('{Source}')";

    internal void EnsureBytes(int length)
    {
        if (Bytes.Length < length)
        {
            Bytes = new byte[Math.Max(length, Bytes.Length * 2)];
        }

        Length = length;
    }

    internal void EnsureFloats(int length)
    {
        if (Floats.Length < length)
        {
            Floats = new float[length];
        }

        Length = length;
    }
}

/// <summary>
/// Copies the image of the current row out of a cursor or row, so decoding can run later on another thread. MLImage
/// getters dispose the previous image when asked for the next one, so pixels are copied at once.
/// </summary>
internal sealed class ImageRowReader : IDisposable
{
    private readonly DataViewRow _row;
    private readonly ImageColumnInfo _info;
    private readonly ValueGetter<VBuffer<byte>>? _bytesGetter;
    private readonly ValueGetter<MLImage>? _imageGetter;
    private readonly ValueGetter<VBuffer<float>>? _floatsGetter;
    private readonly ValueGetter<ReadOnlyMemory<char>>? _sourceGetter;
    private VBuffer<byte> _bytes;
    private VBuffer<float> _floats;
    private MLImage? _image;
    private ReadOnlyMemory<char> _source;

    /// <param name="row">The cursor or row; the image column (and <paramref name="sourceColumn"/>) must be active.</param>
    /// <param name="info">The resolved image column.</param>
    /// <param name="sourceColumn">An optional text column (such as the image path) quoted in error messages.</param>
    internal ImageRowReader(DataViewRow row, ImageColumnInfo info, DataViewSchema.Column? sourceColumn = null)
    {
        _row = row;
        _info = info;
        var column = row.Schema[info.Index];
        switch (info.Kind)
        {
            case ImageColumnKind.EncodedBytes:
                _bytesGetter = row.GetGetter<VBuffer<byte>>(column);
                break;
            case ImageColumnKind.Image:
                _imageGetter = row.GetGetter<MLImage>(column);
                break;
            default:
                _floatsGetter = row.GetGetter<VBuffer<float>>(column);
                break;
        }

        if (sourceColumn is { } source)
        {
            _sourceGetter = row.GetGetter<ReadOnlyMemory<char>>(source);
        }
    }

    /// <summary>
    /// A single sequential cursor. ML.NET may otherwise hand out a consolidating cursor whose worker threads read every
    /// column eagerly, so one unreadable file would break the whole cursor instead of failing (or being skipped) in
    /// our getter.
    /// </summary>
    internal static DataViewRowCursor OpenSequential(IDataView data, IEnumerable<DataViewSchema.Column> columns, Random? random = null) =>
        data.GetRowCursorSet(columns, 1, random)[0];

    /// <summary>Picks a text column that identifies rows (the image path, normally) for error messages.</summary>
    internal static DataViewSchema.Column? FindSourceColumn(DataViewSchema schema, string imageColumnName)
    {
        DataViewSchema.Column? first = null;
        foreach (var column in schema)
        {
            if (column.IsHidden || column.Type is not TextDataViewType || column.Name == imageColumnName)
            {
                continue;
            }

            if (column.Name.Contains("path", StringComparison.OrdinalIgnoreCase) || column.Name.Contains("file", StringComparison.OrdinalIgnoreCase))
            {
                return column;
            }

            first ??= column;
        }

        return first;
    }

    /// <summary>Copies the current row's image into <paramref name="target"/>.</summary>
    internal void Read(RawImage target)
    {
        target.Position = _row.Position;
        target.ReadError = null;
        target.Source = null;
        if (_sourceGetter is not null)
        {
            _sourceGetter(ref _source);
            target.Source = _source.ToString();
        }

        switch (_info.Kind)
        {
            case ImageColumnKind.EncodedBytes:
                try
                {
                    _bytesGetter!(ref _bytes);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // LoadRawImageBytes throws from its getter on a missing or unreadable file.
                    target.ReadError = ex.Message;
                    target.Length = 0;
                    return;
                }

                target.EnsureBytes(_bytes.Length);
                _bytes.CopyTo(target.Bytes.AsSpan(0, _bytes.Length));
                break;
            case ImageColumnKind.Image:
                ReadImage(target);
                break;
            default:
                _floatsGetter!(ref _floats);
                target.EnsureFloats(_floats.Length);
                _floats.CopyTo(target.Floats.AsSpan(0, _floats.Length));
                target.Width = _info.Width;
                target.Height = _info.Height;
                break;
        }
    }

    private void ReadImage(RawImage target)
    {
        try
        {
            _imageGetter!(ref _image!);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // LoadImages throws from its getter on an unreadable file; report it like an undecodable image.
            target.ReadError = ex.Message;
            target.Length = 0;
            return;
        }

        if (_image is null)
        {
            target.ReadError = "the Image value is missing (null)";
            target.Length = 0;
            return;
        }

        var format = _image.PixelFormat;
        if (format is not (MLPixelFormat.Bgra32 or MLPixelFormat.Rgba32))
        {
            target.ReadError = $"unsupported MLImage pixel format {format}";
            target.Length = 0;
            return;
        }

        int w = _image.Width, h = _image.Height;
        if ((long)w * h * 4 > Array.MaxLength)
        {
            // w·h·4 would overflow the copy below; the decoder's MaxImagePixels check reports the size.
            target.ReadError = $"the image is {w}x{h} pixels, too large to copy";
            target.Length = 0;
            return;
        }

        var pixels = _image.Pixels;
        target.EnsureBytes(w * h * 4);
        var dst = target.Bytes.AsSpan(0, w * h * 4);
        pixels[..dst.Length].CopyTo(dst);
        if (format == MLPixelFormat.Bgra32)
        {
            for (int i = 0; i < dst.Length; i += 4)
            {
                (dst[i], dst[i + 2]) = (dst[i + 2], dst[i]);
            }
        }

        target.Width = w;
        target.Height = h;
    }

    public void Dispose()
    {
        _image?.Dispose();
        _image = null;
    }
}
