using System.Globalization;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Visualization;

/// <summary>Shared drawing helpers: fonts, text, image tiles, argument checks and PNG output.</summary>
internal static class PictureKit
{
    // Spacing of every picture: outer margin, gap between tiles or panels, and the title's text size.
    public const float Margin = 20;
    public const float Gap = 12;
    public const float TitleSize = 20;

    public static readonly SKColor Background = SKColors.White;
    public static readonly SKColor Ink = new(0x22, 0x22, 0x22);
    public static readonly SKColor MaskGrey = new(0x80, 0x80, 0x80);
    public static readonly SKColor FrameGrey = new(0xC8, 0xC8, 0xC8);

    // SKTypeface.Default is whatever the platform font manager picks first (on Linux, sometimes a maths font),
    // so ask for common sans families and fall back to it.
    private static readonly Lazy<SKTypeface> Sans = new(() => Pick(SKFontStyle.Normal));
    private static readonly Lazy<SKTypeface> SansBold = new(() => Pick(SKFontStyle.Bold));

    public static SKTypeface Regular => Sans.Value;

    public static SKTypeface Bold => SansBold.Value;

    public static SKPaint TextPaint(float size, bool bold = false, SKColor? color = null) => new()
    {
        Typeface = bold ? Bold : Regular,
        TextSize = size,
        IsAntialias = true,
        Color = color ?? Ink,
    };

    /// <summary>Draws <paramref name="text"/> centred horizontally on <paramref name="centerX"/> with its baseline at <paramref name="baseline"/>.</summary>
    public static void DrawCentered(SKCanvas canvas, string text, float centerX, float baseline, SKPaint paint) =>
        canvas.DrawText(text, centerX - (paint.MeasureText(text) / 2), baseline, paint);

    /// <summary>Makes an RGBA bitmap from a CHW float image in [0, 1] (values clamped, NaN shown black).</summary>
    public static SKBitmap ToBitmap(float[] chw, int channels, int height, int width)
    {
        var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        var plane = height * width;
        var rgba = new byte[plane * 4];
        for (var p = 0; p < plane; p++)
        {
            for (var c = 0; c < 3; c++)
            {
                rgba[(4 * p) + c] = ToByte(chw[((channels == 1 ? 0 : c) * plane) + p]);
            }

            rgba[(4 * p) + 3] = 255;
        }

        // Row-by-row copy: SkiaSharp may pad rows beyond width * 4 bytes.
        var destination = bitmap.GetPixels();
        for (var y = 0; y < height; y++)
        {
            System.Runtime.InteropServices.Marshal.Copy(rgba, y * width * 4, destination + (y * bitmap.RowBytes), width * 4);
        }

        return bitmap;
    }

    /// <summary>Draws a bitmap scaled into <paramref name="target"/> with nearest-neighbour sampling, so pixels stay crisp.</summary>
    public static void DrawTile(SKCanvas canvas, SKBitmap bitmap, SKRect target)
    {
        using var paint = new SKPaint { FilterQuality = SKFilterQuality.None, IsAntialias = false };
        canvas.DrawBitmap(bitmap, target, paint);
    }

    public static void DrawFrame(SKCanvas canvas, SKRect target)
    {
        using var paint = new SKPaint { Color = FrameGrey, Style = SKPaintStyle.Stroke, StrokeWidth = 1, IsAntialias = false };
        canvas.DrawRect(SKRect.Inflate(target, 0.5f, 0.5f), paint);
    }

    /// <summary>Greys out the masked patches (true entries, row-major over the patch grid) of a tile drawn at <paramref name="target"/>.</summary>
    public static void DrawMask(SKCanvas canvas, bool[] mask, int gridHeight, int gridWidth, SKRect target)
    {
        using var paint = new SKPaint { Color = MaskGrey, Style = SKPaintStyle.Fill, IsAntialias = false };
        var cellWidth = target.Width / gridWidth;
        var cellHeight = target.Height / gridHeight;
        for (var gy = 0; gy < gridHeight; gy++)
        {
            for (var gx = 0; gx < gridWidth; gx++)
            {
                if (mask[(gy * gridWidth) + gx])
                {
                    canvas.DrawRect(SKRect.Create(target.Left + (gx * cellWidth), target.Top + (gy * cellHeight), cellWidth, cellHeight), paint);
                }
            }
        }
    }

    /// <summary>Encodes the surface as PNG at <paramref name="path"/> (folders created) and returns the full path.</summary>
    public static string Save(SKSurface surface, string path)
    {
        var fullPath = Path.GetFullPath(path);
        var folder = Path.GetDirectoryName(fullPath);
        if (!string.IsNullOrEmpty(folder))
        {
            Directory.CreateDirectory(folder);
        }

        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException("SkiaSharp could not encode the picture as PNG.");
        // Atomic: the reconstruction preview replaces its picture every epoch while a viewer may be reading it.
        Persistence.DurableFiles.WriteAtomically(fullPath, data.SaveTo);
        return fullPath;
    }

    public static void CheckPath(string path, string name)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new ArgumentException($"{name} must name the PNG file to write.", name);
        }
    }

    /// <summary>Checks the image geometry and returns the patch grid (rows, columns).</summary>
    public static (int GridHeight, int GridWidth) CheckGeometry(int channels, int height, int width, int patchSize)
    {
        if (channels is not (1 or 3))
        {
            throw new ArgumentOutOfRangeException(nameof(channels), channels, "channels must be 1 (grey) or 3 (RGB).");
        }

        if (height <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(height), height, "height must be positive.");
        }

        if (width <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(width), width, "width must be positive.");
        }

        if (patchSize <= 0 || height % patchSize != 0 || width % patchSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(patchSize), patchSize, $"patchSize must be positive and divide height ({height}) and width ({width}).");
        }

        return (height / patchSize, width / patchSize);
    }

    /// <summary>Checks that a list is non-null, has <paramref name="count"/> items (or any positive count when null) and each has <paramref name="length"/> entries.</summary>
    public static int CheckItems<T>(IReadOnlyList<T[]>? items, int? count, int length, string name, string what)
    {
        if (items is null)
        {
            throw new ArgumentNullException(name);
        }

        if (items.Count == 0)
        {
            throw new ArgumentException($"{name} must hold at least one {what}.", name);
        }

        if (count is int expected && items.Count != expected)
        {
            throw new ArgumentException($"{name} holds {items.Count} items but there are {expected} images; give one per image.", name);
        }

        for (var i = 0; i < items.Count; i++)
        {
            if (items[i] is null || items[i].Length != length)
            {
                throw new ArgumentException($"{name}[{i}] must be a {what} of {length} values, but has {items[i]?.Length.ToString(CultureInfo.InvariantCulture) ?? "null"}.", name);
            }
        }

        return items.Count;
    }

    /// <summary>Pixel scale of the tiles: the requested tile side, or an integer zoom that makes small images at least 112 px.</summary>
    public static float TileScale(int? tileSize, int height, int width)
    {
        var side = Math.Max(height, width);
        if (tileSize is int size)
        {
            if (size <= 0)
            {
                throw new ArgumentOutOfRangeException(nameof(tileSize), tileSize, "tileSize must be positive.");
            }

            return (float)size / side;
        }

        return Math.Max(1, (int)Math.Ceiling(112.0 / side));
    }

    private static byte ToByte(float value) =>
        float.IsNaN(value) ? (byte)0 : (byte)MathF.Round(Math.Clamp(value, 0f, 1f) * 255f);

    private static SKTypeface Pick(SKFontStyle style)
    {
        foreach (var family in new[] { "DejaVu Sans", "Liberation Sans", "Arial", "Helvetica", "Segoe UI", "Noto Sans" })
        {
            var typeface = SKFontManager.Default.MatchFamily(family, style);
            if (typeface is not null)
            {
                return typeface;
            }
        }

        return SKTypeface.FromFamilyName(null, style) ?? SKTypeface.Default;
    }
}
