using System.Buffers.Binary;
using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Hostile image inputs (issue 10, items 4 and 5): truncated files, header-only files, NaN/Infinity pixel vectors and
/// decompression bombs. Every case must fail with an <see cref="InvalidDataException"/> naming the column, the row
/// and the file, or be skipped with SkipBadImages, and a bomb must be refused before its pixels are allocated.
/// </summary>
[TestClass]
public sealed class HostileImageTests
{
    [TestMethod]
    public void HalfAPngIsRefusedNamingColumnRowAndFile()
    {
        using var files = new MlNetTestData();
        var png = NoisyPng(64);
        File.WriteAllBytes(Path.Combine(files.Folder, "half.png"), png.AsSpan(0, png.Length / 2).ToArray());
        var ex = ReadFails(files, "half.png");
        StringAssert.Contains(ex.Message, "truncated");
    }

    [TestMethod]
    public void HeaderOnlyPngIsRefused()
    {
        using var files = new MlNetTestData();
        var png = NoisyPng(64);
        // Signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC): a valid header and nothing else.
        File.WriteAllBytes(Path.Combine(files.Folder, "header.png"), png.AsSpan(0, 33).ToArray());
        ReadFails(files, "header.png");
    }

    [TestMethod]
    public void TruncatedJpegIsRefused()
    {
        using var files = new MlNetTestData();
        var jpeg = Encode(NoisyBitmap(64), SKEncodedImageFormat.Jpeg);
        File.WriteAllBytes(Path.Combine(files.Folder, "half.jpg"), jpeg.AsSpan(0, jpeg.Length / 2).ToArray());
        ReadFails(files, "half.jpg");
    }

    [TestMethod]
    public void TruncatedFilesAreSkippedWithSkipBadImages()
    {
        using var files = new MlNetTestData();
        var png = NoisyPng(64);
        File.WriteAllBytes(Path.Combine(files.Folder, "half.png"), png.AsSpan(0, png.Length / 2).ToArray());
        File.WriteAllBytes(Path.Combine(files.Folder, "bomb.png"), PngDeclaring(100_000, 100_000));
        var source = Source(files, skip: true, "ok.png", "half.png", "bomb.png");
        var batches = source.ReadEpoch(0, 4, CancellationToken.None).ToList();
        Assert.AreEqual(1, batches.Sum(b => b.Count));
        Assert.AreEqual(2L, source.BadImagesSkipped);
    }

    [TestMethod]
    [DataRow(20_000, 20_000)]
    [DataRow(100_000, 100_000)]
    public void PngBombIsRefusedBeforeItsPixelsAreAllocated(int width, int height)
    {
        using var files = new MlNetTestData();
        var bomb = PngDeclaring(width, height);
        Assert.IsLessThan(2000, bomb.Length, "the bomb must be a tiny file");
        File.WriteAllBytes(Path.Combine(files.Folder, "bomb.png"), bomb);
        long before = PeakRssBytes(reset: true);
        var ex = ReadFails(files, "bomb.png");
        long grown = PeakRssBytes() - before;
        StringAssert.Contains(ex.Message, "MaxImagePixels");
        StringAssert.Contains(ex.Message, $"{width}x{height}");
        // Decoding the 20000x20000 bomb took 2.2 GB before the header check; the check itself needs next to nothing.
        Assert.IsLessThan(200L << 20, grown, $"peak RSS grew by {grown >> 20} MB");
    }

    [TestMethod]
    public void JpegBombIsRefusedFromItsSofHeader()
    {
        using var files = new MlNetTestData();
        File.WriteAllBytes(Path.Combine(files.Folder, "bomb.jpg"), JpegDeclaring(60_000, 60_000));
        long before = PeakRssBytes(reset: true);
        var ex = ReadFails(files, "bomb.jpg");
        StringAssert.Contains(ex.Message, "MaxImagePixels");
        Assert.IsLessThan(200L << 20, PeakRssBytes() - before);
    }

    [TestMethod]
    public void TheCapIsConfigurable()
    {
        using var files = new MlNetTestData();
        File.WriteAllBytes(Path.Combine(files.Folder, "big.png"), NoisyPng(64));
        var source = Source(files, skip: false, maxPixels: 64 * 63, "big.png");
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => source.ReadEpoch(0, 2, CancellationToken.None).ToList());
        StringAssert.Contains(ex.Message, "64x64");
        Assert.AreEqual(1, Source(files, skip: false, maxPixels: 64 * 64, "big.png").ReadEpoch(0, 2, CancellationToken.None).Sum(b => b.Count));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext(1).Transforms.BootMaePretrain(
            new BootMaePretrainingEstimator.Options { MaxImagePixels = 0 }));
    }

    [TestMethod]
    public void TransformAppliesTheMaxImagePixelsOfItsOptionsAndSaveBootMaeKeepsIt()
    {
        using var files = new MlNetTestData();
        File.WriteAllBytes(Path.Combine(files.Folder, "big.png"), NoisyPng(64));
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { ("big.png", "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        void Refuses(ITransformer model)
        {
            var ex = Assert.ThrowsExactly<InvalidDataException>(() =>
                ml.Data.CreateEnumerable<MlNetTestData.FeaturesOut>(model.Transform(data), reuseRowObject: false).ToList());
            StringAssert.Contains(ex.Message, "64x64");
            StringAssert.Contains(ex.Message, "MaxImagePixels (4,032)");
            StringAssert.Contains(ex.Message, "big.png");
        }

        // One row below the image: Transform refuses it from the header, as training would.
        using var capped = ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, MaxImagePixels = 64 * 63 }).Fit(data);
        Assert.AreEqual(64L * 63, capped.MaxImagePixels);
        Refuses(capped);
        using (var engine = ml.Model.CreatePredictionEngine<MlNetTestData.ImageRow, MlNetTestData.FeaturesOut>(
            ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Append(capped), new PredictionEngineOptions { OwnsTransformer = false }))
        {
            Assert.ThrowsExactly<InvalidDataException>(() => engine.Predict(new MlNetTestData.ImageRow { ImagePath = "big.png", Label = "a" }));
        }

        // The default (50,000,000) reads it.
        using var byDefault = ml.Transforms.BootMaeFeaturize(encoder).Fit(data);
        Assert.AreEqual(50_000_000L, byDefault.MaxImagePixels);
        Assert.HasCount(1, ml.Data.CreateEnumerable<MlNetTestData.FeaturesOut>(byDefault.Transform(data), reuseRowObject: false).ToList());

        // SaveBootMae keeps the setting.
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "model.zip");
        ml.Model.SaveBootMae(capped, data.Schema, path);
        var loaded = ml.Model.LoadBootMae(path, out _);
        try
        {
            var stage = loaded as BootMaeEncoderTransformer ?? ((TransformerChain<ITransformer>)loaded).OfType<BootMaeEncoderTransformer>().Single();
            Assert.AreEqual(64L * 63, stage.MaxImagePixels);
            Refuses(loaded);
        }
        finally
        {
            (loaded as IDisposable)?.Dispose();
        }

        // A trained model's Transform uses its trainer's setting.
        using var pretrained = ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
        {
            Architecture = MlNetTestData.Tiny8, MaxEpochs = 1, BatchSize = 1, Device = BootMaeDevice.Cpu, Seed = 1, MaxImagePixels = 64 * 64,
        }).Fit(data);
        Assert.AreEqual(64L * 64, pretrained.MaxImagePixels);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, MaxImagePixels = 0 }));
    }

    [TestMethod]
    [DataRow(float.NaN)]
    [DataRow(float.PositiveInfinity)]
    [DataRow(float.NegativeInfinity)]
    public void NonFinitePixelVectorsAreRefusedNamingColumnAndRow(float bad)
    {
        var ml = new MLContext(1);
        var data = PixelRows(ml, bad);
        var image = ImageColumn.Resolve(data.Schema, "Image");
        var source = new DataViewImageBatchSource(data, image, null, MlNetTestData.Tiny8, null, 1, shuffle: false, skipBadImages: false, rowCount: null, log: null);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => source.ReadEpoch(0, 4, CancellationToken.None).ToList());
        StringAssert.Contains(ex.Message, "column 'Image'");
        StringAssert.Contains(ex.Message, "row 1 ");
        StringAssert.Contains(ex.Message, "two.png");
        StringAssert.Contains(ex.Message, "index 70 (channel 1, y 0, x 6)");

        var skipping = new DataViewImageBatchSource(data, image, null, MlNetTestData.Tiny8, null, 1, shuffle: false, skipBadImages: true, rowCount: null, log: null);
        Assert.AreEqual(2, skipping.ReadEpoch(0, 4, CancellationToken.None).Sum(b => b.Count));
        Assert.AreEqual(1L, skipping.BadImagesSkipped);
    }

    [TestMethod]
    public void NanPixelVectorsAreRefusedByTransformToo()
    {
        var ml = new MLContext(1);
        var data = PixelRows(ml, float.NaN);
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var model = ml.Transforms.BootMaeFeaturize(encoder).Fit(data);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() =>
            ml.Data.CreateEnumerable<MlNetTestData.FeaturesOut>(model.Transform(data), reuseRowObject: false).ToList());
        StringAssert.Contains(ex.Message, "NaN");
        StringAssert.Contains(ex.Message, "two.png");
    }

    private static InvalidDataException ReadFails(MlNetTestData files, string badName)
    {
        var source = Source(files, skip: false, "ok.png", badName);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => source.ReadEpoch(0, 4, CancellationToken.None).ToList());
        StringAssert.Contains(ex.Message, "column 'Image'");
        StringAssert.Contains(ex.Message, "row 1 ");
        StringAssert.Contains(ex.Message, badName);
        return ex;
    }

    private static DataViewImageBatchSource Source(MlNetTestData files, bool skip, params string[] names) =>
        Source(files, skip, ImageDecoder.DefaultMaxImagePixels, names);

    private static DataViewImageBatchSource Source(MlNetTestData files, bool skip, long maxPixels, params string[] names)
    {
        if (!File.Exists(Path.Combine(files.Folder, "ok.png")))
        {
            files.WriteColour("ok.png");
        }

        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, names.Select(n => (n, "a")));
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        return new DataViewImageBatchSource(data, ImageColumn.Resolve(data.Schema, "Image"), null, MlNetTestData.Tiny8, null, 1,
            shuffle: false, skipBadImages: skip, rowCount: null, log: null, maxImagePixels: maxPixels);
    }

    private static IDataView PixelRows(MLContext ml, float bad)
    {
        var rows = new[] { "one.png", "two.png", "three.png" }.Select(p => new PixelRow { ImagePath = p, Image = Enumerable.Repeat(128f, 192).ToArray() }).ToArray();
        rows[1].Image[70] = bad; // channel 1 (plane of 64), y 0, x 6
        return ml.Data.LoadFromEnumerable(rows);
    }

    private static SKBitmap NoisyBitmap(int size)
    {
        var random = new Random(7);
        var bitmap = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (int y = 0; y < size; y++)
        {
            for (int x = 0; x < size; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256), 255));
            }
        }

        return bitmap;
    }

    private static byte[] Encode(SKBitmap bitmap, SKEncodedImageFormat format)
    {
        using (bitmap)
        {
            using var data = bitmap.Encode(format, 90);
            return data.ToArray();
        }
    }

    private static byte[] NoisyPng(int size) => Encode(NoisyBitmap(size), SKEncodedImageFormat.Png);

    /// <summary>A real 8x8 PNG whose IHDR is rewritten (with a valid CRC) to declare <paramref name="width"/>x<paramref name="height"/>.</summary>
    internal static byte[] PngDeclaring(int width, int height)
    {
        var png = Encode(NoisyBitmap(8), SKEncodedImageFormat.Png);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), width);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), height);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
        return png;
    }

    /// <summary>A real 16x16 baseline JPEG whose SOF0 is rewritten to declare <paramref name="width"/>x<paramref name="height"/>.</summary>
    internal static byte[] JpegDeclaring(int width, int height)
    {
        var jpeg = Encode(NoisyBitmap(16), SKEncodedImageFormat.Jpeg);
        int sof = FindMarker(jpeg, 0xC0);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), checked((ushort)height));
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), checked((ushort)width));
        return jpeg;
    }

    private static int FindMarker(byte[] jpeg, byte marker)
    {
        for (int i = 2; i + 1 < jpeg.Length; i++)
        {
            if (jpeg[i] == 0xFF && jpeg[i + 1] == marker)
            {
                return i;
            }
        }

        throw new InvalidOperationException($"marker FF{marker:X2} not found");
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (var b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
            }
        }

        return ~crc;
    }

    /// <summary>Resets, then later reads, VmHWM (the peak resident set), so earlier tests' peaks do not hide this one's.</summary>
    private static long PeakRssBytes(bool reset = false)
    {
        if (reset)
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }

        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }

        throw new InvalidOperationException("no VmHWM in /proc/self/status");
    }

    private sealed class PixelRow
    {
        public string ImagePath { get; set; } = string.Empty;

        [VectorType(3, 8, 8)]
        public float[] Image { get; set; } = Array.Empty<float>();
    }
}
