using System.Text.Json;
using Microsoft.ML.BootMae.OnnxExport;
using Microsoft.ML.BootMae.Persistence;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Microsoft.ML.Transforms.Image;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// ONNX export: ONNX Runtime's output against the TorchSharp path (BootMaeFeaturize and the classifier's columns) on
/// the same pixels, fp32, at most 1e-4 apart; the ML.NET recipe persisted by plain Model.Save/Load; bad input.
/// </summary>
[TestClass]
public sealed class OnnxExportTests
{
    private const float Tolerance = 1e-4f;

    // 16×16, patch 4 (4×4 grid), three blocks: every pooling and a middle block stay cheap.
    private static readonly BootMaeArchitecture Rgb = new()
    {
        ImageSize = 16, PatchSize = 4, Channels = 3, EmbedDim = 32, Depth = 3, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static readonly BootMaeArchitecture Grey = Rgb with { Channels = 1 };

    private static MlNetTestData _data = null!;
    private static IDataView _rows = null!;
    private static BootMaeImageClassificationTransformer _fineTuned = null!;
    private static BootMaeImageClassificationTransformer _probe = null!;

    public TestContext TestContext { get; set; } = null!;

    [ClassInitialize]
    public static void Train(TestContext context)
    {
        _ = context;
        _data = new MlNetTestData();
        var ml = new MLContext(seed: 1);
        var rows = new List<(string, string)>();
        for (int i = 0; i < 12; i++)
        {
            rows.Add((_data.WriteColour($"c{i}.png", 16, 16, shift: i * 9), ((char)('a' + (i % 3))).ToString()));
        }

        _rows = MlNetTestData.Rows(ml, rows);
        var prepared = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", _data.Folder, "ImagePath"))
            .Fit(_rows).Transform(_rows);
        using var encoder = BootMaeEncoder.CreateRandom(Rgb, seed: 5);
        // The fine-tuned classifier starts from an encoder with the ImageNet mean/std (as an imported MAE one has), so
        // fine-tuning, scoring, ExtractEncoder and the ONNX graphs are all checked with a per-channel normalisation.
        using var imageNetEncoder = BootMaeEncoder.CreateRandom(Rgb with { Normalization = BootMaeNormalization.ImageNet }, seed: 5);
        _fineTuned = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = imageNetEncoder, MaxEpochs = 25, BatchSize = 6, Seed = 2, LearningRate = 1e-2f,
        }).Fit(prepared);
        _probe = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, FreezeEncoder = true, SourceBlock = 1, MaxEpochs = 25, BatchSize = 6, Seed = 3, LearningRate = 0.1f,
        }).Fit(prepared);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        _fineTuned?.Dispose();
        _probe?.Dispose();
        _data?.Dispose();
    }

    [TestMethod]
    public void RandomEncoderMatchesBootMaeFeaturizeForEveryPoolingAndBlock()
    {
        var uniform = new BootMaeNormalization { Mean = [0.25], Std = [0.3] };
        foreach (var architecture in new[] { Rgb, Grey, Rgb with { Normalization = BootMaeNormalization.ImageNet }, Grey with { Normalization = uniform } })
        {
            using var encoder = BootMaeEncoder.CreateRandom(architecture, seed: 11);
            foreach (var pooling in new[] { BootMaePooling.Mean, BootMaePooling.Cls, BootMaePooling.Tokens })
            {
                foreach (int? block in new int?[] { null, 0, 1 })
                {
                    AssertEncoderParity(encoder, pooling, block, $"random {architecture.Channels}-channel, {pooling}, block {block?.ToString() ?? "last"}");
                }
            }
        }
    }

    [TestMethod]
    public void TrainedEncodersMatchBootMaeFeaturize()
    {
        // A fine-tuned encoder (every block trained) and a pretrained grey one (BootMAE steps).
        using var fineTuned = _fineTuned.ExtractEncoder();
        Assert.AreEqual(BootMaeNormalization.ImageNet, fineTuned.Architecture.Normalization);
        foreach (var pooling in new[] { BootMaePooling.Mean, BootMaePooling.Cls, BootMaePooling.Tokens })
        {
            AssertEncoderParity(fineTuned, pooling, null, $"fine-tuned, {pooling}");
        }

        AssertEncoderParity(fineTuned, BootMaePooling.Mean, 1, "fine-tuned, Mean, block 1");

        var random = new Random(3);
        var pixels = Enumerable.Range(0, 8 * 16 * 16).Select(_ => (float)random.NextDouble()).ToArray();
        var settings = new BootMaePretrainerSettings
        {
            MaxEpochs = 1, MaxSteps = 3, BatchSize = 4, Seed = 3, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32,
        };
        var pretrainArchitecture = Grey with { DeepBlock = 2 };
        using var pretrained = new BootMaePretrainer(pretrainArchitecture, settings)
            .Train(new InMemoryImageSource(pixels, null, 8, 1, 16, seed: 1, shuffle: true));
        AssertEncoderParity(pretrained, BootMaePooling.Mean, null, "pretrained grey, Mean");
        AssertEncoderParity(pretrained, BootMaePooling.Cls, 0, "pretrained grey, Cls, block 0");
    }

    [TestMethod]
    public void ClassifiersMatchScoreAndPredictedLabel()
    {
        foreach (var (name, model) in new[] { ("fine-tuned", _fineTuned), ("linear probe", _probe) })
        {
            var ml = new MLContext(seed: 1);
            var pixels = ExtractPixels(ml, _rows);
            var pixelRows = PixelRows(ml, pixels);
            var scored = model.Transform(ml.Transforms.CopyColumns("Image", "Pixels").Fit(pixelRows).Transform(pixelRows));
            var expectedScores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
            var expectedLabels = scored.GetColumn<uint>("PredictedLabel").ToArray();

            var path = Path.Combine(_data.Folder, $"classifier-{name.Replace(' ', '-')}.onnx");
            model.ExportOnnx(path);
            using var session = new InferenceSession(path);
            using var results = session.Run([Input(pixels, 16)]);
            var scores = results.First(r => r.Name == "scores").AsTensor<float>();
            var predicted = results.First(r => r.Name == "predicted").AsTensor<long>();
            CollectionAssert.AreEqual(new[] { pixels.Count, 3 }, scores.Dimensions.ToArray());
            float max = 0;
            for (int i = 0; i < pixels.Count; i++)
            {
                for (int c = 0; c < 3; c++)
                {
                    max = Math.Max(max, Math.Abs(scores[i, c] - expectedScores[i][c]));
                }

                Assert.AreEqual((long)expectedLabels[i] - 1, predicted[i], $"{name}: image {i}");
            }

            TestContext.WriteLine($"classifier {name}: max |ONNX - TorchSharp| of scores = {max:E2}, largest probability {expectedScores.Max(r => r.Max()):F3}");
            Assert.IsLessThanOrEqualTo(Tolerance, max, $"{name}: scores differ by {max}");
            var metadata = session.ModelMetadata.CustomMetadataMap;
            CollectionAssert.AreEqual(new[] { "a", "b", "c" }, JsonSerializer.Deserialize<string[]>(metadata["bootmae.classNames"]));
            Assert.AreEqual(name == "linear probe" ? "linear-probe" : "fine-tune", metadata["bootmae.head"]);
        }
    }

    [TestMethod]
    public void OnnxPipelineSavedByModelSaveLoadsAndMatchesBootMaeFeaturize()
    {
        var ml = new MLContext(seed: 1);
        using var encoder = _fineTuned.ExtractEncoder();
        var onnx = Path.Combine(_data.Folder, "pipeline-encoder.onnx");
        encoder.ExportOnnx(onnx);
        var pipeline = ml.Transforms.BootMaeOnnxInput(Rgb, _data.Folder)
            .Append(ml.Transforms.ApplyOnnxModel("features", "pixels", onnx));
        var zip = Path.Combine(_data.Folder, "onnx-pipeline.zip");
        ml.Model.Save(pipeline.Fit(_rows), _rows.Schema, zip);

        var loaded = new MLContext().Model.Load(zip, out _);
        var actual = loaded.Transform(_rows).GetColumn<float[]>("features").ToArray();
        var expected = ml.Transforms.LoadImages("Image", _data.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaeFeaturize(encoder))
            .Fit(_rows).Transform(_rows).GetColumn<float[]>("Features").ToArray();
        Assert.HasCount(expected.Length, actual);
        float max = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.HasCount(Rgb.EmbedDim, actual[i]);
            max = Math.Max(max, expected[i].Zip(actual[i], (e, a) => Math.Abs(e - a)).Max());
        }

        TestContext.WriteLine($"ML.NET ApplyOnnxModel pipeline after Model.Load: max |ONNX - TorchSharp| = {max:E2}");
        Assert.IsLessThanOrEqualTo(Tolerance, max);
    }

    [TestMethod]
    public void BatchDimensionIsDynamic()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Rgb, seed: 4);
        var path = Path.Combine(_data.Folder, "dynamic.onnx");
        encoder.ExportOnnx(path, BootMaePooling.Cls);
        using var session = new InferenceSession(path);
        Assert.AreEqual(-1, session.InputMetadata["pixels"].Dimensions[0]);
        CollectionAssert.AreEqual(new[] { -1, 3, 16, 16 }, session.InputMetadata["pixels"].Dimensions);
        var images = RandomPixels(5, seed: 8);
        using var five = session.Run([Input(images, 16)]);
        using var one = session.Run([Input(images.Take(1).ToList(), 16)]);
        var batch = five.First().AsTensor<float>();
        var single = one.First().AsTensor<float>();
        for (int d = 0; d < Rgb.EmbedDim; d++)
        {
            Assert.AreEqual(batch[0, d], single[0, d], 1e-5f, "a row's features do not depend on the batch");
        }
    }

    [TestMethod]
    public void ExportRejectsADisposedEncoderAMissingFolderAndTooLargeAnArchitecture()
    {
        var encoder = BootMaeEncoder.CreateRandom(Rgb, seed: 1);
        encoder.Dispose();
        var disposed = Assert.ThrowsExactly<ObjectDisposedException>(() => encoder.ExportOnnx(Path.Combine(_data.Folder, "disposed.onnx")));
        StringAssert.Contains(disposed.Message, "disposed");
        Assert.IsFalse(File.Exists(Path.Combine(_data.Folder, "disposed.onnx")));

        using var live = BootMaeEncoder.CreateRandom(Rgb, seed: 1);
        var missing = Path.Combine(_data.Folder, "no-such-folder", "encoder.onnx");
        var notFound = Assert.ThrowsExactly<DirectoryNotFoundException>(() => live.ExportOnnx(missing));
        StringAssert.Contains(notFound.Message, "does not exist");
        Assert.IsFalse(Directory.Exists(Path.GetDirectoryName(missing)), "the exporter must not create folders");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => live.ExportOnnx(Path.Combine(_data.Folder, "x.onnx"), sourceBlock: 3));

        // ViT-H-sized and beyond: more weights than one protobuf message (2 GiB) holds. Checked before anything is built.
        var huge = BootMaeArchitecture.VitLarge16 with { EmbedDim = 2048, Depth = 32, Heads = 16 };
        var tooLarge = Assert.ThrowsExactly<NotSupportedException>(() => BootMaeOnnxExporter.CheckExpressible(huge));
        StringAssert.Contains(tooLarge.Message, "2 GiB");
        BootMaeOnnxExporter.CheckExpressible(BootMaeArchitecture.VitLarge16);

        using var classifierCopy = _fineTuned.ExtractEncoder();
        Assert.ThrowsExactly<DirectoryNotFoundException>(() => _fineTuned.ExportOnnx(missing));
    }

    [TestMethod]
    public void ExportIsAtomic()
    {
        var path = Path.Combine(_data.Folder, "atomic.onnx");
        File.WriteAllText(path, "the previous model");
        // A write that dies half-way leaves the previous file whole and no staging file behind.
        Assert.ThrowsExactly<IOException>(() => DurableFiles.WriteAtomically(path, stream =>
        {
            stream.Write(new byte[1000]);
            throw new IOException("disk full");
        }));
        Assert.AreEqual("the previous model", File.ReadAllText(path));
        Assert.IsEmpty(Directory.GetFiles(_data.Folder, ".atomic.onnx.*"));

        using var encoder = BootMaeEncoder.CreateRandom(Rgb, seed: 1);
        encoder.ExportOnnx(path);
        Assert.IsEmpty(Directory.GetFiles(_data.Folder, ".atomic.onnx.*"));
        using var session = new InferenceSession(path);
        Assert.AreEqual("encoder", session.ModelMetadata.CustomMetadataMap["bootmae.model"]);
        Assert.AreEqual("Mean", session.ModelMetadata.CustomMetadataMap["bootmae.pooling"]);
    }

    [TestMethod]
    public void DeploymentDocSnippetsRun()
    {
        var ml = new MLContext(seed: 1);
        using var encoder = BootMaeEncoder.CreateRandom(Rgb, seed: 6);
        using var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", _data.Folder, "ImagePath"))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
            {
                Encoder = encoder, MaxEpochs = 1, BatchSize = 12, Seed = 1,
            }))
            .Fit(_rows);
        var expected = model.Transform(_rows).GetColumn<uint>("PredictedLabel").ToArray();
        var expectedScores = model.Transform(_rows).GetColumn<float[]>("Score").ToArray();
        var folder = Path.Combine(_data.Folder, "snippets");
        Directory.CreateDirectory(folder);
        var previous = Environment.CurrentDirectory;
        try
        {
            Environment.CurrentDirectory = folder;
            DocSnippets.DeploymentSnippets.Export(encoder, model);
            DocSnippets.DeploymentSnippets.SavePipeline(ml, Rgb, _data.Folder, _rows);
            File.WriteAllText("images.tsv", "ImagePath\n" + string.Join("\n", Enumerable.Range(0, 12).Select(i => $"c{i}.png")) + "\n");
            var (scores, predicted) = DocSnippets.DeploymentSnippets.Serve();
            Assert.HasCount(12, scores);
            // Every row's own scores (a kept VBuffer would repeat the last row's), then the labels.
            for (int i = 0; i < expectedScores.Length; i++)
            {
                for (int k = 0; k < expectedScores[i].Length; k++)
                {
                    Assert.AreEqual(expectedScores[i][k], scores[i][k], Tolerance, $"row {i}, class {k}");
                }
            }

            CollectionAssert.AreEqual(expected.Select(e => (long)e - 1).ToArray(), predicted.Select(p => p[0]).ToArray());
            var (features, names) = DocSnippets.DeploymentSnippets.RunDirectly(RandomPixels(2, seed: 1).SelectMany(p => p).ToArray(), 2, 16);
            Assert.HasCount(2 * Rgb.EmbedDim, features);
            Assert.IsNull(names, "an encoder has no class names");
        }
        finally
        {
            Environment.CurrentDirectory = previous;
        }
    }

    private void AssertEncoderParity(BootMaeEncoder encoder, BootMaePooling pooling, int? block, string what)
    {
        var a = encoder.Architecture;
        var images = RandomPixels(4, seed: 21, a.ImageSize);
        var ml = new MLContext(seed: 1);
        var expected = ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options
        {
            Encoder = encoder, ImageColumnName = "Pixels", OutputColumnName = "Features", Pooling = pooling, SourceBlock = block,
            Precision = BootMaePrecision.Float32,
        }).Fit(PixelRows(ml, images, a.ImageSize)).Transform(PixelRows(ml, images, a.ImageSize))
            .GetColumn<VBuffer<float>>("Features").Select(v => v.DenseValues().ToArray()).ToArray();

        var path = Path.Combine(_data.Folder, $"encoder-{Guid.NewGuid():N}.onnx");
        encoder.ExportOnnx(path, pooling, block);
        using var session = new InferenceSession(path);
        using var results = session.Run([Input(images, a.ImageSize)]);
        var features = results.Single().AsTensor<float>();
        Assert.AreEqual(pooling == BootMaePooling.Tokens ? 3 : 2, features.Rank, what);
        var flat = features.ToArray();
        int per = flat.Length / images.Count;
        Assert.AreEqual(expected[0].Length, per, what);
        float max = 0;
        for (int i = 0; i < images.Count; i++)
        {
            for (int j = 0; j < per; j++)
            {
                max = Math.Max(max, Math.Abs(flat[(i * per) + j] - expected[i][j]));
            }
        }

        TestContext.WriteLine($"encoder {what}: max |ONNX - TorchSharp| = {max:E2}");
        Assert.IsLessThanOrEqualTo(Tolerance, max, what);
        File.Delete(path);
    }

    private static List<float[]> RandomPixels(int count, int seed, int size = 16)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, 3 * size * size).Select(_ => (float)random.Next(256)).ToArray()).ToList();
    }

    private static List<float[]> ExtractPixels(MLContext ml, IDataView rows) =>
        ml.Transforms.BootMaeOnnxInput(Rgb, _data.Folder).Fit(rows).Transform(rows)
            .GetColumn<VBuffer<float>>("pixels").Select(v => v.DenseValues().ToArray()).ToList();

    private static IDataView PixelRows(MLContext ml, IReadOnlyList<float[]> pixels, int size = 16)
    {
        var schema = SchemaDefinition.Create(typeof(PixelRow));
        schema[nameof(PixelRow.Pixels)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, 3, size, size);
        return ml.Data.LoadFromEnumerable(pixels.Select(p => new PixelRow { Pixels = p }).ToArray(), schema);
    }

    private static NamedOnnxValue Input(IReadOnlyList<float[]> pixels, int size) =>
        NamedOnnxValue.CreateFromTensor("pixels", new DenseTensor<float>(pixels.SelectMany(p => p).ToArray(), new[] { pixels.Count, 3, size, size }));

    private sealed class PixelRow
    {
        public float[] Pixels { get; set; } = [];
    }
}
