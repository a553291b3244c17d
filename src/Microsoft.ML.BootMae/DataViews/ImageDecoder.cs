using Microsoft.ML.BootMae.Training;
using SkiaSharp;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>Random view augmentation for pretraining: random resized crop plus horizontal flip.</summary>
/// <param name="MinScale">Smallest crop area as a fraction of the image (0.2 in the paper; lighter for tiny images).</param>
/// <param name="FlipProbability">Chance of a horizontal flip.</param>
internal sealed record ImageAugmentation(double MinScale, double FlipProbability = 0.5)
{
    /// <summary>The paper's crop (scale 0.2–1) for normal images, a lighter one (0.5–1) below 64 pixels.</summary>
    internal static ImageAugmentation For(BootMaeArchitecture architecture) => new(architecture.ImageSize < 64 ? 0.5 : 0.2);

    /// <summary>The per-image generator: depends only on seed, epoch and the row's position, never on threads.</summary>
    internal static Random RandomFor(int seed, int epoch, long position) => new(Seeds.Derive(Seeds.Derive(seed, epoch, stream: 5), position, stream: 6));
}

/// <summary>
/// Turns a <see cref="RawImage"/> into planar floats in [0, 1] at the architecture's size and channel count, with
/// SkiaSharp doing decoding and high-quality resampling. Thread-safe (no shared state).
/// </summary>
internal static class ImageDecoder
{
    /// <summary>Default of <c>MaxImagePixels</c>: 50 million pixels (200 MB of RGBA), far above any photo a ViT needs.</summary>
    internal const long DefaultMaxImagePixels = 50_000_000;

    /// <summary>The one check of a <c>MaxImagePixels</c> setting (trainers, featurizer, transformers): it must be positive.</summary>
    internal static long CheckMaxImagePixels(long value, string paramName)
        => value > 0 ? value : throw new ArgumentOutOfRangeException(paramName, value, "MaxImagePixels must be positive.");

    /// <summary>Decodes, optionally augments, resizes and writes C·S·S floats into <paramref name="destination"/>.</summary>
    /// <param name="image">The staged row.</param>
    /// <param name="column">The image column.</param>
    /// <param name="size">Target side.</param>
    /// <param name="channels">Target channels.</param>
    /// <param name="destination">C·S·S floats.</param>
    /// <param name="augmentation">Random crop and flip, or null.</param>
    /// <param name="random">The row's generator for <paramref name="augmentation"/>.</param>
    /// <param name="maxImagePixels">Largest width·height accepted; checked against the file's header before any pixel memory is allocated.</param>
    /// <exception cref="InvalidDataException">
    /// The image cannot be decoded, is truncated, is larger than <paramref name="maxImagePixels"/>, or (pixel vectors)
    /// holds NaN or ±Infinity; the message names the column, the row and, where known, the file.
    /// </exception>
    internal static void Decode(RawImage image, ImageColumnInfo column, int size, int channels, Span<float> destination,
        ImageAugmentation? augmentation = null, Random? random = null, long maxImagePixels = DefaultMaxImagePixels)
    {
        if (image.ReadError is { } readError)
        {
            throw Bad(image, column, readError);
        }

        if (column.Kind == ImageColumnKind.Pixels)
        {
            // Math.Clamp keeps NaN, and one NaN pixel turns a whole embedding (or a training step) into NaN.
            CheckFinite(image, column);
            // Pixel vectors are never augmented; they only need channel conversion and, when sizes differ, resizing.
            if (image.Height == size && image.Width == size)
            {
                PlanarToPlanar(image.Floats.AsSpan(0, image.Length), column.Channels, size, channels, destination);
                return;
            }

            using var fromPixels = PlanarToBitmap(image.Floats.AsSpan(0, image.Length), column.Channels, image.Width, image.Height);
            Render(fromPixels, size, channels, destination, null, null);
            return;
        }

        if (column.Kind == ImageColumnKind.Image)
        {
            // LoadImages has already decoded it; the cap still bounds the copies made from here on.
            CheckSize(image, column, image.Width, image.Height, maxImagePixels);
        }

        using var bitmap = column.Kind == ImageColumnKind.EncodedBytes
            ? DecodeBytes(image, column, maxImagePixels)
            : RgbaToBitmap(image.Bytes.AsSpan(0, image.Width * image.Height * 4), image.Width, image.Height);
        Render(bitmap, size, channels, destination, augmentation, random);
    }

    private static InvalidDataException Bad(RawImage image, ImageColumnInfo column, string why) =>
        new($"Could not decode the image in {image.Describe(column.Name)}: {why}. Fix or remove the file, or set SkipBadImages = true to skip such rows.");

    private static void CheckSize(RawImage image, ImageColumnInfo column, long width, long height, long maxImagePixels)
    {
        if (width <= 0 || height <= 0)
        {
            throw Bad(image, column, $"the image declares an invalid size of {width}x{height} pixels");
        }

        if (width * height > maxImagePixels)
        {
            throw Bad(image, column,
                $"the image declares {width}x{height} = {width * height:N0} pixels, more than MaxImagePixels ({maxImagePixels:N0}); " +
                "it may be a decompression bomb. Raise MaxImagePixels (in the trainer's or BootMaeFeaturize's options) if such images are expected");
        }
    }

    private static void CheckFinite(RawImage image, ImageColumnInfo column)
    {
        var values = image.Floats.AsSpan(0, image.Length);
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                int plane = column.Height * column.Width;
                int c = i / plane, y = i % plane / column.Width, x = i % column.Width;
                throw new InvalidDataException(
                    $"The pixel vector in {image.Describe(column.Name)} holds {values[i]} at index {i} (channel {c}, y {y}, x {x}); " +
                    "pixels must be finite 0..255 values. Fix the step that produced them, or set SkipBadImages = true to skip such rows.");
            }
        }
    }

    private static SKBitmap DecodeBytes(RawImage image, ImageColumnInfo column, long maxImagePixels)
    {
        if (image.Length == 0)
        {
            throw Bad(image, column, "the file is empty or missing");
        }

        using var data = SKData.CreateCopy(image.Bytes.AsSpan(0, image.Length));
        // SKCodec.Create parses only the header (PNG IHDR, JPEG SOFn, ...), so the size is known before any pixel memory exists.
        using var codec = SKCodec.Create(data) ?? throw Bad(image, column, "not a supported image format (PNG, JPEG, BMP, GIF, WebP), or its header is damaged");
        CheckSize(image, column, codec.Info.Width, codec.Info.Height, maxImagePixels);
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        SKBitmap bitmap;
        try
        {
            bitmap = new SKBitmap(info);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // SkiaSharp throws a plain Exception when the pixel memory cannot be had.
            throw Bad(image, column, $"no memory for its {info.Width}x{info.Height} pixels ({ex.Message})");
        }

        var result = codec.GetPixels(info, bitmap.GetPixels());
        if (result != SKCodecResult.Success)
        {
            bitmap.Dispose();
            // IncompleteInput is a cut-off file: Skia fills the missing rows with zeros, which would be silent garbage.
            throw Bad(image, column, result == SKCodecResult.IncompleteInput
                ? $"the file is truncated ({image.Length} bytes; the decoder ran out of data before the last row)"
                : $"the decoder reported {result}");
        }

        return bitmap;
    }

    private static SKBitmap RgbaToBitmap(ReadOnlySpan<byte> rgba, int width, int height)
    {
        var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        rgba.CopyTo(WritablePixels(bitmap));
        return bitmap;
    }

    private static SKBitmap PlanarToBitmap(ReadOnlySpan<float> planar, int planes, int width, int height)
    {
        var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        var dst = WritablePixels(bitmap);
        int plane = width * height;
        int first = planes == 4 ? 1 : 0; // ExtractPixels' default order with alpha is A, R, G, B.
        for (int i = 0; i < plane; i++)
        {
            byte r = ToByte(planar[(first * plane) + i]);
            byte g = planes == 1 ? r : ToByte(planar[((first + 1) * plane) + i]);
            byte b = planes == 1 ? r : ToByte(planar[((first + 2) * plane) + i]);
            dst[(4 * i) + 0] = r;
            dst[(4 * i) + 1] = g;
            dst[(4 * i) + 2] = b;
            dst[(4 * i) + 3] = 255;
        }

        return bitmap;
    }

    private static unsafe Span<byte> WritablePixels(SKBitmap bitmap) => new((void*)bitmap.GetPixels(), bitmap.ByteCount);

    private static byte ToByte(float v) => (byte)Math.Clamp(MathF.Round(v), 0f, 255f);

    private static void PlanarToPlanar(ReadOnlySpan<float> src, int srcPlanes, int size, int channels, Span<float> dst)
    {
        int plane = size * size;
        int first = srcPlanes == 4 ? 1 : 0;
        const float Scale = 1f / 255f;
        for (int i = 0; i < plane; i++)
        {
            float r = src[(first * plane) + i];
            float g = srcPlanes == 1 ? r : src[((first + 1) * plane) + i];
            float b = srcPlanes == 1 ? r : src[((first + 2) * plane) + i];
            if (channels == 1)
            {
                dst[i] = Math.Clamp(Luma(r, g, b) * Scale, 0f, 1f);
            }
            else
            {
                dst[i] = Math.Clamp(r * Scale, 0f, 1f);
                dst[plane + i] = Math.Clamp(g * Scale, 0f, 1f);
                dst[(2 * plane) + i] = Math.Clamp(b * Scale, 0f, 1f);
            }
        }
    }

    // ITU-R BT.601 luma; exact for grey pixels.
    private static float Luma(float r, float g, float b) => r == g && g == b ? r : (0.299f * r) + (0.587f * g) + (0.114f * b);

    /// <summary>Crops (randomly when augmenting), resizes with high-quality filtering and writes planar floats.</summary>
    private static void Render(SKBitmap source, int size, int channels, Span<float> destination, ImageAugmentation? augmentation, Random? random)
    {
        var crop = new SKRectI(0, 0, source.Width, source.Height);
        bool flip = false;
        if (augmentation is not null && random is not null)
        {
            crop = RandomResizedCrop(source.Width, source.Height, augmentation.MinScale, random);
            flip = random.NextDouble() < augmentation.FlipProbability;
        }

        if (crop.Width == size && crop.Height == size && crop.Left == 0 && crop.Top == 0)
        {
            WritePlanar(source.GetPixelSpan(), source.RowBytes, size, channels, flip, destination);
            return;
        }

        using var cropped = new SKBitmap();
        if (!source.ExtractSubset(cropped, crop))
        {
            throw new InvalidOperationException($"Could not crop a {source.Width}x{source.Height} image to {crop}.");
        }

        using var scaled = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        if (!cropped.ScalePixels(scaled, SKFilterQuality.High))
        {
            throw new InvalidOperationException($"Could not resize a {crop.Width}x{crop.Height} image to {size}x{size}.");
        }

        WritePlanar(scaled.GetPixelSpan(), scaled.RowBytes, size, channels, flip, destination);
    }

    private static void WritePlanar(ReadOnlySpan<byte> rgba, int rowBytes, int size, int channels, bool flip, Span<float> dst)
    {
        int plane = size * size;
        const float Scale = 1f / 255f;
        for (int y = 0; y < size; y++)
        {
            var row = rgba.Slice(y * rowBytes, size * 4);
            for (int x = 0; x < size; x++)
            {
                int sx = flip ? size - 1 - x : x;
                float r = row[4 * sx], g = row[(4 * sx) + 1], b = row[(4 * sx) + 2];
                int o = (y * size) + x;
                if (channels == 1)
                {
                    dst[o] = Luma(r, g, b) * Scale;
                }
                else
                {
                    dst[o] = r * Scale;
                    dst[plane + o] = g * Scale;
                    dst[(2 * plane) + o] = b * Scale;
                }
            }
        }
    }

    /// <summary>torchvision's RandomResizedCrop: area fraction in [minScale, 1], aspect ratio in [3/4, 4/3] (log-uniform).</summary>
    internal static SKRectI RandomResizedCrop(int width, int height, double minScale, Random random)
    {
        double area = (double)width * height;
        double logLow = Math.Log(3.0 / 4.0), logHigh = Math.Log(4.0 / 3.0);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * (minScale + ((1 - minScale) * random.NextDouble()));
            double ratio = Math.Exp(logLow + ((logHigh - logLow) * random.NextDouble()));
            int w = (int)Math.Round(Math.Sqrt(target * ratio));
            int h = (int)Math.Round(Math.Sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= width && h <= height)
            {
                int left = random.Next(0, width - w + 1);
                int top = random.Next(0, height - h + 1);
                return new SKRectI(left, top, left + w, top + h);
            }
        }

        // Fallback: the whole image, clamped to the ratio range (torchvision's central crop).
        double aspect = (double)width / height;
        int cw = width, ch = height;
        if (aspect < 3.0 / 4.0)
        {
            ch = (int)Math.Round(width / (3.0 / 4.0));
        }
        else if (aspect > 4.0 / 3.0)
        {
            cw = (int)Math.Round(height * (4.0 / 3.0));
        }

        int l = (width - cw) / 2, t = (height - ch) / 2;
        return new SKRectI(l, t, l + cw, t + ch);
    }

    /// <summary>Values per decoded image: C·S·S.</summary>
    internal static int PixelsPerImage(BootMaeArchitecture architecture) =>
        architecture.Channels * architecture.ImageSize * architecture.ImageSize;
}
