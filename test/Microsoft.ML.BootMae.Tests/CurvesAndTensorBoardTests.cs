using System.Buffers.Binary;
using Microsoft.ML.BootMae.Visualization;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The training curves drawn by OxyPlot (OxyPlot.SkiaSharp) beside ML.NET's ImageAnalytics, which needs SkiaSharp
/// 2.88 (ScottPlot 5 moves it to 3.x and ImageAnalytics 5.0.1 then fails with MissingMethodException), and the
/// TensorBoard metrics sink.
/// </summary>
[TestClass]
public sealed class CurvesAndTensorBoardTests
{
    private string directory = string.Empty;

    [TestInitialize]
    public void CreateDirectory()
    {
        directory = Path.Combine(Path.GetTempPath(), "bootmae-curves-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
    }

    [TestCleanup]
    public void DeleteDirectory()
    {
        if (Directory.Exists(directory))
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [TestMethod]
    public void CurvePngDrawnByOxyPlotDecodesThroughImageAnalyticsInTheSameProcess()
    {
        // OxyPlot renders on SkiaSharp first, then ImageAnalytics decodes with its SkiaSharp: both must bind to the
        // same 2.88 assembly and native library.
        var curves = BootMaePictures.TrainingCurves(BootMaePicturesTests.Curve(120), Path.Combine(directory, "curves.png"), "BootMAE pretraining");
        using var files = new MlNetTestData();
        string colour = files.WriteColour("c.png");
        File.Copy(curves, Path.Combine(files.Folder, "curves.png"));

        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (colour, "a"), ("curves.png", "b") });
        var images = ml.Transforms.LoadImages("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var sizes = new List<(int Width, int Height, int Bytes)>();
        using (var cursor = images.GetRowCursor(images.Schema))
        {
            var getImage = cursor.GetGetter<MLImage>(images.Schema["Image"]);
            MLImage image = null!;
            while (cursor.MoveNext())
            {
                getImage(ref image);

                // Pixels goes through SKBitmap.GetPixelSpan, the call that fails when SkiaSharp is 3.x.
                sizes.Add((image.Width, image.Height, image.Pixels.Length));
            }
        }

        Assert.HasCount(2, sizes);
        Assert.AreEqual((8, 8, 8 * 8 * 4), sizes[0]);
        Assert.AreEqual((20 + (3 * 500) + (2 * 12) + 20, 20 + 34 + 380 + 20), (sizes[1].Width, sizes[1].Height));
        Assert.AreEqual(sizes[1].Width * sizes[1].Height * 4, sizes[1].Bytes);
    }

    [TestMethod]
    public void TensorBoardSinkWritesTheReportsAsScalars()
    {
        var logDir = Path.Combine(directory, "runs", "one");
        var sink = BootMaeTensorBoard.Sink(logDir);
        sink(new BootMaeTrainingMetrics
        {
            Step = 50, TotalSteps = 100, Loss = 1.25f, PixelLoss = 0.75f, FeatureLoss = 0.5f, PixelLossZeroBaseline = 1.5f,
            FeatureTargetSharedEnergy = 0.25f, LearningRate = 1.5e-3, EmaMomentum = 0.996, FeatureWeight = 1, ImagesPerSecond = 320,
        });
        sink(new BootMaeTrainingMetrics { Step = 100, TotalSteps = 100, IsEpochEnd = true, Loss = 1f, PixelLoss = 0.625f, LearningRate = 0 });
        sink(new BootMaeTrainingMetrics { Dataset = BootMaeDataset.Validation, Step = 100, TotalSteps = 100, Loss = 0.5f, Accuracy = 0.875f, LearningRate = 0 });

        var file = Directory.GetFiles(logDir, "events.out.tfevents.*").Single();
        var scalars = ReadScalars(file);
        var expected = new (string Tag, long Step, float Value)[]
        {
            ("train/loss", 50, 1.25f), ("train/pixel_loss", 50, 0.75f), ("train/feature_loss", 50, 0.5f), ("train/pixel_loss_zero_baseline", 50, 1.5f),
            ("train/feature_target_shared_energy", 50, 0.25f), ("train/learning_rate", 50, 1.5e-3f), ("train/ema_momentum", 50, 0.996f),
            ("train/feature_weight", 50, 1f), ("train/images_per_second", 50, 320f),
            ("train_epoch/loss", 100, 1f), ("train_epoch/pixel_loss", 100, 0.625f), ("train_epoch/learning_rate", 100, 0f),
            ("validation/loss", 100, 0.5f), ("validation/accuracy", 100, 0.875f),
        };
        CollectionAssert.AreEqual(expected, scalars.ToArray(), string.Join("; ", scalars));
    }

    [TestMethod]
    public void TensorBoardSinkRejectsABlankFolder()
    {
        var blank = Assert.ThrowsExactly<ArgumentException>(() => BootMaeTensorBoard.Sink(" "));
        Assert.AreEqual("logDir", blank.ParamName);
    }

    /// <summary>
    /// Reads a TFRecord event file (length, masked CRC, an <c>Event</c> protobuf, masked CRC per record) and returns
    /// its scalar summaries: <c>Event.step</c> (field 2), <c>Event.summary</c> (field 5) →
    /// <c>Summary.value</c> (field 1) → <c>tag</c> (field 1) and <c>simple_value</c> (field 2, float).
    /// </summary>
    private static List<(string Tag, long Step, float Value)> ReadScalars(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var result = new List<(string, long, float)>();
        for (int at = 0; at < bytes.Length;)
        {
            int length = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at)));
            var record = bytes.AsSpan(at + 12, length);
            at += 12 + length + 4;

            long step = 0;
            var summaries = new List<byte[]>();
            foreach (var (field, value, data) in Fields(record.ToArray()))
            {
                if (field == 2)
                {
                    step = (long)value;
                }
                else if (field == 5)
                {
                    summaries.Add(data!);
                }
            }

            foreach (var summary in summaries)
            {
                foreach (var (_, _, entry) in Fields(summary).Where(f => f.Field == 1))
                {
                    string? tag = null;
                    float? scalar = null;
                    foreach (var (field, value, data) in Fields(entry!))
                    {
                        if (field == 1)
                        {
                            tag = System.Text.Encoding.UTF8.GetString(data!);
                        }
                        else if (field == 2)
                        {
                            scalar = BitConverter.Int32BitsToSingle((int)value);
                        }
                    }

                    if (tag is not null && scalar is { } v)
                    {
                        result.Add((tag, step, v));
                    }
                }
            }
        }

        return result;
    }

    // Protobuf wire format: varints, 64-bit, length-delimited and 32-bit fields.
    private static IEnumerable<(int Field, ulong Value, byte[]? Data)> Fields(byte[] message)
    {
        int at = 0;
        ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; ; shift += 7)
            {
                byte b = message[at++];
                v |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80)
                {
                    return v;
                }
            }
        }

        while (at < message.Length)
        {
            ulong key = Varint();
            int field = (int)(key >> 3);
            switch (key & 7)
            {
                case 0:
                    yield return (field, Varint(), null);
                    break;
                case 1:
                    yield return (field, BinaryPrimitives.ReadUInt64LittleEndian(message.AsSpan(at)), null);
                    at += 8;
                    break;
                case 2:
                    int length = (int)Varint();
                    yield return (field, 0, message.AsSpan(at, length).ToArray());
                    at += length;
                    break;
                case 5:
                    yield return (field, BinaryPrimitives.ReadUInt32LittleEndian(message.AsSpan(at)), null);
                    at += 4;
                    break;
                default:
                    throw new InvalidDataException($"Unexpected wire type {key & 7}.");
            }
        }
    }
}
