using Microsoft.ML.Data;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>Tiny synthetic images and data views for the ML.NET layer tests.</summary>
internal sealed class MlNetTestData : IDisposable
{
    // 8×8 RGB, patch 4: a 2×2 grid keeps every forward pass trivial.
    internal static readonly BootMaeArchitecture Tiny8 = new()
    {
        ImageSize = 8, PatchSize = 4, Channels = 3, EmbedDim = 16, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    internal static readonly BootMaeArchitecture Tiny8Grey = Tiny8 with { Channels = 1 };

    internal MlNetTestData()
    {
        Folder = Path.Combine(Path.GetTempPath(), $"bootmae-mlnet-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Folder);
    }

    internal string Folder { get; }

    internal static byte ColourR(int x, int y) => (byte)((x * 30) + 1);

    internal static byte ColourG(int x, int y) => (byte)((y * 30) + 2);

    internal static byte ColourB(int x, int y) => (byte)(((x + y) * 10) + 3);

    internal static byte Grey(int x, int y) => (byte)((x * 8) + (y * 20) + 5);

    /// <summary>An RGB image whose pixel (x, y) is (ColourR, ColourG, ColourB), plus <paramref name="shift"/> on red.</summary>
    internal string WriteColour(string name, int width = 8, int height = 8, int shift = 0)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)(ColourR(x, y) + shift), ColourG(x, y), ColourB(x, y), 255));
            }
        }

        return Write(name, bitmap);
    }

    /// <summary>An 8-bit greyscale PNG whose pixel (x, y) is Grey(x, y).</summary>
    internal unsafe string WriteGrey(string name, int width = 8, int height = 8)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque));
        var pixels = new Span<byte>((void*)bitmap.GetPixels(), bitmap.ByteCount);
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                pixels[(y * bitmap.RowBytes) + x] = Grey(x, y);
            }
        }

        return Write(name, bitmap);
    }

    /// <summary>A uniform RGB image.</summary>
    internal string WriteUniform(string name, int width, int height, SKColor colour)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bitmap.Erase(colour);
        return Write(name, bitmap);
    }

    /// <summary>A file that is not an image.</summary>
    internal string WriteBad(string name)
    {
        var path = Path.Combine(Folder, name);
        File.WriteAllText(path, "this is not an image");
        return name;
    }

    private string Write(string name, SKBitmap bitmap)
    {
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(Path.Combine(Folder, name), data.ToArray());
        return name;
    }

    /// <summary>A data view of (ImagePath, Label) rows.</summary>
    internal static IDataView Rows(MLContext ml, IEnumerable<(string Path, string Label)> rows) =>
        ml.Data.LoadFromEnumerable(rows.Select(r => new ImageRow { ImagePath = r.Path, Label = r.Label }).ToArray());

    /// <summary>N colour images, labels cycling through a, b, c.</summary>
    internal IDataView ColourRows(MLContext ml, int count)
    {
        var rows = new List<(string, string)>();
        for (int i = 0; i < count; i++)
        {
            rows.Add((WriteColour($"c{i}.png", shift: i), ((char)('a' + (i % 3))).ToString()));
        }

        return Rows(ml, rows);
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }

    /// <summary>A row with an image path and a text label.</summary>
    internal sealed class ImageRow
    {
        public string ImagePath { get; set; } = string.Empty;

        public string Label { get; set; } = string.Empty;
    }

    /// <summary>A prediction input with only a path.</summary>
    internal sealed class PathOnly
    {
        public string ImagePath { get; set; } = string.Empty;
    }

    /// <summary>A featurizer output.</summary>
    internal sealed class FeaturesOut
    {
        [VectorType]
        public float[] Features { get; set; } = Array.Empty<float>();
    }
}
