using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// BootMaeEncoder.FromPyTorch on files written by PyTorch (tools/make_interop_fixtures.py): official training checkpoints,
/// Hugging Face names, inferred architectures, the normalisation decision, and the resampled position table.
/// </summary>
[TestClass]
public sealed class PyTorchImportTests
{
    // The fixtures' encoder: 16×16 RGB, patch 4, D 32, 2 blocks, 2 heads, MLP ratio 4.
    private static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 16, PatchSize = 4, Channels = 3, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", "interop", name);

    private static float[] Images()
    {
        using var scope = NewDisposeScope();
        return Safetensors.Load(Fixture("mae_style_expected.safetensors"))["images01"].data<float>().ToArray();
    }

    [TestMethod]
    public void OfficialCheckpointGivesTheStudentByDefaultAndTheTeacherOnRequest()
    {
        // torch.save of {'model' (DDP 'module.' keys), 'model_ema', 'optimizer' (a real AdamW state), 'scaler', 'epoch': 7,
        // 'args': argparse.Namespace}: read as data, the Namespace included, and the right state_dict taken.
        using var scope = NewDisposeScope();
        var expected = Safetensors.Load(Fixture("official_expected.safetensors"));
        var images = Images();
        var log = new List<string>();
        using (var student = BootMaeEncoder.FromPyTorch(Fixture("official_checkpoint.pth"), new BootMaePyTorchImportOptions { Heads = 2, Log = log.Add }))
        {
            Assert.AreEqual(Tiny with { RegressorDim = 512, DecoderDepth = 2 }, student.Architecture);
            BootMaeEncoderTests.AssertTokens(student, images, expected["student_tokens"], "official checkpoint, student");
        }

        var taken = log.Single(l => l.Contains("took the student", StringComparison.Ordinal));
        StringAssert.Contains(taken, "under 'model'");
        StringAssert.Contains(taken, "'args', 'epoch', 'model_ema', 'optimizer', 'scaler'");
        StringAssert.Contains(taken, "Model = Teacher takes 'model_ema'");
        StringAssert.Contains(string.Join("\n", log), "BootMAE / BEiT names");
        StringAssert.Contains(log.Single(l => l.Contains("input normalisation", StringComparison.Ordinal)), "args.imagenet_default_mean_and_std is False");

        using (var teacher = BootMaeEncoder.FromPyTorch(Fixture("official_checkpoint.pth"), new BootMaePyTorchImportOptions { Architecture = Tiny, Model = BootMaeCheckpointModel.Teacher }))
        {
            Assert.AreEqual(Tiny, teacher.Architecture);
            BootMaeEncoderTests.AssertTokens(teacher, images, expected["teacher_tokens"], "official checkpoint, teacher");
        }
    }

    [TestMethod]
    public void TheCheckpointsArgsDecideTheNormalization()
    {
        // A BootMAE run with --imagenet_default_mean_and_std: its args say ImageNet although the names are BootMAE's.
        var log = new List<string>();
        using (var encoder = BootMaeEncoder.FromPyTorch(Fixture("official_imagenet_args_checkpoint.pth"), new BootMaePyTorchImportOptions { Architecture = Tiny, Log = log.Add }))
        {
            Assert.AreEqual(BootMaeNormalization.ImageNet, encoder.Architecture.Normalization);
        }

        StringAssert.Contains(log.Single(l => l.Contains("input normalisation", StringComparison.Ordinal)), "args.imagenet_default_mean_and_std is True");

        // An explicit choice wins, with a note that the file suggests otherwise.
        log.Clear();
        var options = new BootMaePyTorchImportOptions { Architecture = Tiny, Normalization = BootMaeNormalization.BootMae, Log = log.Add };
        using (var encoder = BootMaeEncoder.FromPyTorch(Fixture("official_imagenet_args_checkpoint.pth"), options))
        {
            Assert.AreEqual(BootMaeNormalization.BootMae, encoder.Architecture.Normalization);
        }

        StringAssert.Contains(log.Single(l => l.Contains("input normalisation", StringComparison.Ordinal)), "(given). Note: the file suggests mean [0.485, 0.456, 0.406]");
    }

    [TestMethod]
    public void FilesWithoutTheRequestedWeightsSayWhatTheyHold()
    {
        // optimizer, epoch and an argparse.Namespace, no weights: the message lists them with their types.
        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(Fixture("no_weights_checkpoint.pth"), Tiny));
        StringAssert.Contains(error.Message, "'args' (an object of class argparse.Namespace)");
        StringAssert.Contains(error.Message, "'epoch' (an int)");
        StringAssert.Contains(error.Message, "'optimizer' (a dictionary of 2 entries)");
        StringAssert.Contains(error.Message, "'model'");

        // A plain state_dict has no teacher.
        error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(
            Fixture("mae_style_encoder.pth"), new BootMaePyTorchImportOptions { Architecture = Tiny, Model = BootMaeCheckpointModel.Teacher }));
        StringAssert.Contains(error.Message, "no teacher ('model_ema')");
        error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(
            Fixture("mae_style_encoder.safetensors"), new BootMaePyTorchImportOptions { Architecture = Tiny, Model = BootMaeCheckpointModel.Teacher }));
        StringAssert.Contains(error.Message, "'model_ema.'");
    }

    [TestMethod]
    public void APickleThatWouldRunCodeIsOnlyReadAsData()
    {
        // Python's pickle.load of this file runs os.system("echo executed > /tmp/bootmae-interop-pickle-executed").
        const string Marker = "/tmp/bootmae-interop-pickle-executed";
        File.Delete(Marker);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(Fixture("code_execution_checkpoint.pth"), Tiny));

        StringAssert.Contains(error.Message, "could not be read as a torch.save file");
        Assert.IsFalse(File.Exists(Marker), "the unpickler ran code from the file");
    }

    [TestMethod]
    public void HuggingFaceViTMaeNamesMatchTheHuggingFaceForward()
    {
        // ViTMAEForPreTraining's names (vit.embeddings…, vit.encoder.layer.N.attention.attention.query/key/value with a
        // non-zero key bias, vit.layernorm, decoder.*) as pytorch_model.bin; PyTorch ran Hugging Face's forward on
        // ImageNet-normalised pixels. The MAE decoder keys select the ImageNet normalisation. Hugging Face's LayerNorm eps
        // is 1e-12 and ours 1e-6, which moves these outputs by up to ~5e-5 (inside the 1e-4 tolerance); against the same
        // forward with eps 1e-6 the mapping itself agrees to fp32 rounding (~1e-6).
        using var scope = NewDisposeScope();
        var expected = Safetensors.Load(Fixture("hf_vitmae_expected.safetensors"));
        var log = new List<string>();
        using var encoder = BootMaeEncoder.FromPyTorch(Fixture("hf_vitmae_pytorch_model.bin"), new BootMaePyTorchImportOptions { Heads = 2, Log = log.Add });

        Assert.AreEqual(Tiny with { RegressorDim = 512, DecoderDepth = 2, Normalization = BootMaeNormalization.ImageNet }, encoder.Architecture);
        BootMaeEncoderTests.AssertTokens(encoder, Images(), expected["tokens"], "Hugging Face ViTMAEForPreTraining (LN eps 1e-12)");
        BootMaeEncoderTests.AssertTokens(encoder, Images(), expected["tokens_eps_1e-6"], "Hugging Face ViTMAEForPreTraining (LN eps 1e-6)", 1e-5);
        var all = string.Join("\n", log);
        StringAssert.Contains(all, "Hugging Face ViTMAEForPreTraining names");
        StringAssert.Contains(all, "(ImageNet)");
    }

    [TestMethod]
    public void ArchitectureIsInferredFromShapesAndReported()
    {
        var log = new List<string>();
        using (var encoder = BootMaeEncoder.FromPyTorch(Fixture("mae_style_encoder.pth"), new BootMaePyTorchImportOptions { Heads = 2, Log = log.Add }))
        {
            var a = encoder.Architecture;
            Assert.AreEqual((16, 4, 3, 32, 2, 2, 4.0), (a.ImageSize, a.PatchSize, a.Channels, a.EmbedDim, a.Depth, a.Heads, a.MlpRatio));
            Assert.AreEqual(BootMaeNormalization.ImageNet, a.Normalization);
        }

        var inferred = log.Single(l => l.Contains("inferred the architecture", StringComparison.Ordinal));
        StringAssert.Contains(inferred, "ImageSize 16 (the 4×4 position table × patch 4), PatchSize 4, Channels 3, EmbedDim 32, Depth 2, MlpRatio 4 (128 hidden units), Heads 2 (given)");

        // Heads are not in the file: width 32 fits no preset and is not a multiple of 64, so the caller must say.
        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(Fixture("mae_style_encoder.pth")));
        StringAssert.Contains(error.Message, "number of attention heads is not stored in the file");
        StringAssert.Contains(error.Message, "set Heads");

        // A ViT-Ti-wide encoder gets the preset's 3 heads, and says so. Built here: 1 block of width 192, patch 16, 2×2 grid.
        var path = Path.Combine(Path.GetTempPath(), $"bootmae-{Guid.NewGuid():N}-vitti.pth");
        var vitTi = new BootMaeArchitecture { ImageSize = 32, PatchSize = 16, EmbedDim = 192, Depth = 1, Heads = 3, RegressorHeads = 3, PredictorHeads = 3 };
        using (var random = BootMaeEncoder.CreateRandom(vitTi, seed: 1))
        {
            WriteFlatPth(path, random, _ => true);
        }

        log.Clear();
        using (var encoder = BootMaeEncoder.FromPyTorch(path, new BootMaePyTorchImportOptions { Log = log.Add }))
        {
            Assert.AreEqual(vitTi, encoder.Architecture);
        }

        StringAssert.Contains(log.Single(l => l.Contains("inferred", StringComparison.Ordinal)), "Heads 3 (not stored in the file: the ViT-Ti preset's count for width 192");
        File.Delete(path);
    }

    [TestMethod]
    public void AmbiguousNamingRequiresAnExplicitNormalization()
    {
        // timm / MAE-encoder-only naming (fused qkv bias, no decoder): both conventions exist, so a guess is refused.
        using var scope = NewDisposeScope();
        var path = Path.Combine(Path.GetTempPath(), $"bootmae-{Guid.NewGuid():N}-timm.pth");
        var table = new System.Collections.Hashtable();
        foreach (var (key, value) in Safetensors.Load(Fixture("mae_style_encoder.safetensors")))
        {
            if (!key.StartsWith("decoder", StringComparison.Ordinal) && key != "mask_token")
            {
                table[key] = value;
            }
        }

        using (var stream = File.Create(path))
        {
            TorchSharp.PyBridge.PyTorchPickler.PickleStateDict(stream, table, leaveOpen: false);
        }

        var error = Assert.ThrowsExactly<InvalidOperationException>(() => BootMaeEncoder.FromPyTorch(path, Tiny));
        StringAssert.Contains(error.Message, "MAE / timm names (fused attn.qkv.bias)");
        StringAssert.Contains(error.Message, "Normalization = BootMaeNormalization.ImageNet");

        // An explicit choice, in the options or as a non-default architecture normalisation, is taken as given.
        var expected = Safetensors.Load(Fixture("mae_style_expected.safetensors"));
        using (var encoder = BootMaeEncoder.FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = Tiny, Normalization = BootMaeNormalization.BootMae }))
        {
            BootMaeEncoderTests.AssertTokens(encoder, Images(), expected["tokens"], "timm naming, 0.5/0.5 given");
        }

        using (var encoder = BootMaeEncoder.FromPyTorch(path, Tiny with { Normalization = BootMaeNormalization.ImageNet }))
        {
            BootMaeEncoderTests.AssertTokens(encoder, Images(), expected["tokens_imagenet"], "timm naming, ImageNet given");
        }

        File.Delete(path);
    }

    [TestMethod]
    public void PositionTableResamplingMatchesPyTorchBicubic()
    {
        // torch.nn.functional.interpolate(bicubic, align_corners=False, antialias when shrinking) on the 4×4 grid, cls
        // row kept: 6×6 and 8×8 (up), 3×3 (down). Tolerance 1e-5 absolute.
        using var scope = NewDisposeScope();
        var tables = Safetensors.Load(Fixture("pos_resampled.safetensors"));
        foreach (var (name, grid) in new[] { ("grid6", 6), ("grid8", 8), ("grid3", 3) })
        {
            var actual = EncoderImport.Resample(tables["pos_embed"], grid);
            CollectionAssert.AreEqual(tables[name].shape, actual.shape, name);
            double error = actual.sub(tables[name]).abs().max().item<float>();
            Console.WriteLine($"{name}: max |C# - PyTorch| = {error:E2}");
            Assert.IsLessThanOrEqualTo(1e-5, error, $"{name}: differs from PyTorch by {error}");
        }

        // Through the import: a different ImageSize (inferred architecture, or a given one) resamples the file's table.
        var log = new List<string>();
        using (var encoder = BootMaeEncoder.FromPyTorch(Fixture("mae_style_encoder.pth"), new BootMaePyTorchImportOptions { Heads = 2, ImageSize = 24, Log = log.Add }))
        {
            Assert.AreEqual(24, encoder.Architecture.ImageSize);
            Assert.IsTrue(encoder.Module.PositionEmbedding.allclose(tables["grid6"], rtol: 0, atol: 1e-5));
        }

        StringAssert.Contains(log.Single(l => l.Contains("resampled", StringComparison.Ordinal)), "from a 4×4 to a 6×6 grid");
        using (var encoder = BootMaeEncoder.FromPyTorch(Fixture("mae_style_encoder.safetensors"), Tiny with { ImageSize = 12 }))
        {
            Assert.IsTrue(encoder.Module.PositionEmbedding.allclose(tables["grid3"], rtol: 0, atol: 1e-5));
        }
    }

    [TestMethod]
    public void NormalizationIsSavedAndOldFilesReadAsBootMae()
    {
        var imageNet = Tiny with { Normalization = BootMaeNormalization.ImageNet };
        using var encoder = BootMaeEncoder.CreateRandom(imageNet, seed: 4);
        using var saved = new MemoryStream();
        encoder.Save(saved);
        saved.Position = 0;
        using (var loaded = BootMaeEncoder.Load(saved))
        {
            Assert.AreEqual(imageNet, loaded.Architecture);
        }

        // A file written before Normalization existed: the same header without the member reads as BootMAE's 0.5/0.5.
        var bytes = saved.ToArray();
        int headerLength = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8));
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 12, headerLength))!.AsObject();
        StringAssert.Contains(header["Architecture"]!["Normalization"]!.ToJsonString(), "0.485");
        header["Architecture"]!.AsObject().Remove("Normalization");
        var oldHeader = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var old = new MemoryStream();
        old.Write(bytes.AsSpan(0, 8));
        var length = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, oldHeader.Length);
        old.Write(length);
        old.Write(oldHeader);
        old.Write(bytes.AsSpan(12 + headerLength));
        old.Position = 0;
        using (var loaded = BootMaeEncoder.Load(old))
        {
            Assert.AreEqual(Tiny, loaded.Architecture);
            Assert.AreEqual(BootMaeNormalization.BootMae, loaded.Architecture.Normalization);
        }
    }

    [TestMethod]
    public void SafetensorsExportRecordsTheNormalization()
    {
        var folder = Directory.CreateTempSubdirectory("bootmae-norm-").FullName;
        var imageNet = Tiny with { Normalization = BootMaeNormalization.ImageNet };
        using var encoder = BootMaeEncoder.CreateRandom(imageNet, seed: 4);
        var path = Path.Combine(folder, "encoder.safetensors");
        encoder.ExportSafetensors(path);

        // The shape given without a normalisation: the file's metadata decides, over its BootMAE key names (0.5 / 0.5).
        var log = new List<string>();
        using (var imported = BootMaeEncoder.FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = Tiny, Log = log.Add }))
        {
            Assert.AreEqual(BootMaeNormalization.ImageNet, imported.Architecture.Normalization);
            Assert.IsTrue(log.Any(l => l.Contains("metadata records it", StringComparison.Ordinal)), string.Join("\n", log));
        }

        // An explicit choice still wins.
        using (var overridden = BootMaeEncoder.FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = Tiny, Normalization = BootMaeNormalization.BootMae }))
        {
            Assert.AreEqual(BootMaeNormalization.BootMae, overridden.Architecture.Normalization);
        }

        using var plain = BootMaeEncoder.CreateRandom(Tiny, seed: 4);
        plain.ExportSafetensors(path);
        using var reimported = BootMaeEncoder.FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = Tiny });
        Assert.AreEqual(BootMaeNormalization.BootMae, reimported.Architecture.Normalization);
    }

    [TestMethod]
    public void PretrainingFromAnImportedEncoderKeepsItsNormalization()
    {
        // Continued pretraining of an ImageNet-normalised (MAE) import: the run uses the encoder's architecture, its
        // steps and the reconstruction picture (which inverts the normalisation per channel) run, and the result keeps it.
        using var imported = BootMaeEncoder.FromPyTorch(Fixture("mae_style_encoder.pth"), new BootMaePyTorchImportOptions { Architecture = Tiny });
        Assert.AreEqual(BootMaeNormalization.ImageNet, imported.Architecture.Normalization);
        var preview = Path.Combine(Path.GetTempPath(), $"bootmae-{Guid.NewGuid():N}-preview.png");
        var random = new Random(3);
        var pixels = Enumerable.Range(0, 8 * 3 * 16 * 16).Select(_ => (float)random.NextDouble()).ToArray();
        var settings = new BootMaePretrainerSettings
        {
            MaxEpochs = 1, MaxSteps = 2, BatchSize = 4, Seed = 3, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32,
            InitialEncoder = imported, ReconstructionPreviewPath = preview, ReconstructionPreviewCount = 2,
        };

        using var trained = new BootMaePretrainer(imported.Architecture, settings).Train(new InMemoryImageSource(pixels, null, 8, 3, 16, seed: 1, shuffle: true));

        Assert.AreEqual(imported.Architecture, trained.Architecture);
        Assert.IsTrue(File.Exists(preview), "no reconstruction picture was written");
        File.Delete(preview);
        var error = Assert.ThrowsExactly<ArgumentException>(() => new BootMaePretrainer(Tiny, settings));
        StringAssert.Contains(error.Message, "Normalization mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] ≠ mean [0.5], std [0.5]");
    }

    [TestMethod]
    public void NormalizationIsAppliedPerChannelAndValidated()
    {
        using var scope = NewDisposeScope();
        var pixels = rand(2, 3, 4, 4);
        var n = BootMaeNormalization.ImageNet;
        var expected = pixels.sub(tensor(new[] { 0.485f, 0.456f, 0.406f }).reshape(1, 3, 1, 1)).div(tensor(new[] { 0.229f, 0.224f, 0.225f }).reshape(1, 3, 1, 1));
        var actual = InputNormalization.Apply(pixels, n);
        Assert.IsTrue(actual.allclose(expected, rtol: 0, atol: 1e-6));
        Assert.IsTrue(InputNormalization.Invert(actual, n).allclose(pixels, rtol: 0, atol: 1e-6));
        Assert.IsTrue(InputNormalization.Apply(pixels, BootMaeNormalization.BootMae).allclose(pixels.mul(2.0f).sub(1.0f), rtol: 0, atol: 0));

        Assert.AreEqual(BootMaeNormalization.ImageNet, new BootMaeNormalization { Mean = [0.485, 0.456, 0.406], Std = [0.229, 0.224, 0.225] });
        Assert.AreNotEqual(BootMaeNormalization.BootMae, BootMaeNormalization.ImageNet);
        var error = Assert.ThrowsExactly<ArgumentException>(() => (Tiny with { Channels = 1, Normalization = BootMaeNormalization.ImageNet }).Validate());
        StringAssert.Contains(error.Message, "1 channel(s)");
        Assert.ThrowsExactly<ArgumentException>(() => (Tiny with { Normalization = new BootMaeNormalization { Std = [0.0] } }).Validate());
    }

    private static void WriteFlatPth(string path, BootMaeEncoder encoder, Func<string, bool> keep)
    {
        using var scope = NewDisposeScope();
        var table = new System.Collections.Hashtable();
        foreach (var (key, value) in encoder.Module.state_dict())
        {
            if (keep(key))
            {
                table[key] = value.cpu();
            }
        }

        using var stream = File.Create(path);
        TorchSharp.PyBridge.PyTorchPickler.PickleStateDict(stream, table, leaveOpen: false);
    }
}
