using Microsoft.ML.BootMae.Interop;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class BootMaeEncoderTests
{
    private static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 16, PatchSize = 4, Channels = 3, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static string TempFile(string name) => Path.Combine(Path.GetTempPath(), $"bootmae-{Guid.NewGuid():N}-{name}");

    private static float[] RandomPixels(int count, BootMaeArchitecture a, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count * a.Channels * a.ImageSize * a.ImageSize).Select(_ => (float)random.NextDouble()).ToArray();
    }

    [TestMethod]
    public void SaveLoadRoundTripGivesIdenticalEmbeddings()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 3);
        var pixels = RandomPixels(2, Tiny, 1);
        var path = TempFile("enc.bin");
        encoder.Save(path);

        using var loaded = BootMaeEncoder.Load(path);

        Assert.AreEqual(Tiny, loaded.Architecture);
        foreach (var pooling in new[] { BootMaePooling.Mean, BootMaePooling.Cls, BootMaePooling.Tokens })
        {
            CollectionAssert.AreEqual(encoder.Embed(pixels, 2, pooling, 1, BootMaePrecision.Float32), loaded.Embed(pixels, 2, pooling, 1, BootMaePrecision.Float32));
        }
    }

    [TestMethod]
    public void EmbeddingShapesFollowPooling()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 3);
        var pixels = RandomPixels(3, Tiny, 2);

        Assert.HasCount(3 * 32, encoder.Embed(pixels, 3, BootMaePooling.Mean, 1, BootMaePrecision.Float32));
        Assert.HasCount(3 * 32, encoder.Embed(pixels, 3, BootMaePooling.Cls, 0, BootMaePrecision.Float32));
        Assert.HasCount(3 * 16 * 32, encoder.Embed(pixels, 3, BootMaePooling.Tokens, 1, BootMaePrecision.Float32));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => encoder.Embed(pixels, 3, BootMaePooling.Mean, 2, BootMaePrecision.Float32));
    }

    [TestMethod]
    public void BFloat16EmbeddingsStayCloseToFloat32()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 5);
        var pixels = RandomPixels(2, Tiny, 3);

        var full = encoder.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.Float32);
        var half = encoder.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.BFloat16);

        double dot = 0, nf = 0, nh = 0;
        for (int i = 0; i < full.Length; i++)
        {
            dot += full[i] * half[i];
            nf += full[i] * full[i];
            nh += half[i] * half[i];
        }

        Assert.IsGreaterThan(0.999, dot / Math.Sqrt(nf * nh), "cosine similarity of bf16 and fp32 embeddings");
    }

    [TestMethod]
    public void TruncatedFileGivesAClearError()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 3);
        var path = TempFile("enc.bin");
        encoder.Save(path);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes.Take(bytes.Length - 100).ToArray());

        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));

        StringAssert.Contains(error.Message, "truncated");
        StringAssert.Contains(error.Message, path);
    }

    [TestMethod]
    public void TamperedFileGivesAClearError()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 3);
        var path = TempFile("enc.bin");
        encoder.Save(path);
        var bytes = File.ReadAllBytes(path);
        bytes[^10] ^= 0x40;
        File.WriteAllBytes(path, bytes);

        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));

        StringAssert.Contains(error.Message, "SHA-256");
    }

    [TestMethod]
    public void NotAnEncoderFileGivesAClearError()
    {
        var path = TempFile("not-an-encoder.bin");
        File.WriteAllText(path, "hello, this is not an encoder");

        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));

        StringAssert.Contains(error.Message, "not a BootMAE encoder file");
    }

    [TestMethod]
    public void ExportedSafetensorsImportBack()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 8);
        var path = TempFile("enc.safetensors");
        encoder.ExportSafetensors(path);

        using var imported = BootMaeEncoder.FromPyTorch(path, Tiny);

        var pixels = RandomPixels(2, Tiny, 4);
        CollectionAssert.AreEqual(encoder.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.Float32), imported.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.Float32));
        using var scope = NewDisposeScope();
        var keys = Safetensors.Load(path).Keys.ToList();
        CollectionAssert.Contains(keys, "blocks.0.attn.qkv.weight");
        CollectionAssert.Contains(keys, "blocks.1.attn.q_bias");
        CollectionAssert.Contains(keys, "patch_embed.proj.weight");
    }

    [TestMethod]
    [DataRow("mae_style_encoder.pth")]
    [DataRow("mae_style_encoder.safetensors")]
    public void MaeStyleWeightsMatchPyTorch(string file)
    {
        // Written by tools/make_interop_fixtures.py: a fused qkv bias with a non-zero key part, MAE decoder keys to ignore,
        // and the tokens PyTorch 1.13 computed with the ImageNet and with the 0.5/0.5 normalisation. The decoder keys mark
        // an MAE checkpoint, so the import takes the ImageNet mean/std; an explicit choice overrides that.
        // Tolerance: fp32 activations, 1e-4 absolute + 1e-4 relative.
        var directory = Path.Combine(AppContext.BaseDirectory, "TestData", "interop");
        using var scope = NewDisposeScope();
        var expected = Safetensors.Load(Path.Combine(directory, "mae_style_expected.safetensors"));
        var images = expected["images01"].data<float>().ToArray();
        using (var encoder = BootMaeEncoder.FromPyTorch(Path.Combine(directory, file), Tiny))
        {
            Assert.AreEqual(BootMaeNormalization.ImageNet, encoder.Architecture.Normalization);
            AssertTokens(encoder, images, expected["tokens_imagenet"], "ImageNet normalisation (inferred from MAE's decoder keys)");
        }

        var options = new BootMaePyTorchImportOptions { Architecture = Tiny, Normalization = BootMaeNormalization.BootMae };
        using (var encoder = BootMaeEncoder.FromPyTorch(Path.Combine(directory, file), options))
        {
            Assert.AreEqual(Tiny, encoder.Architecture);
            AssertTokens(encoder, images, expected["tokens"], "0.5/0.5 normalisation (given)");
        }
    }

    internal static void AssertTokens(BootMaeEncoder encoder, float[] images, Tensor expectedTokens, string what, double tolerance = 1e-4)
    {
        int count = (int)expectedTokens.shape[0], n = (int)expectedTokens.shape[1] - 1, d = (int)expectedTokens.shape[2];
        var tokens = encoder.Embed(images, count, BootMaePooling.Tokens, encoder.Architecture.Depth - 1, BootMaePrecision.Float32);
        var cls = encoder.Embed(images, count, BootMaePooling.Cls, encoder.Architecture.Depth - 1, BootMaePrecision.Float32);
        using var scope = NewDisposeScope();
        var actualTokens = tensor(tokens).reshape(count, n, d);
        var actualCls = tensor(cls).reshape(count, d);
        double tokenError = actualTokens.sub(expectedTokens[.., 1..]).abs().max().item<float>();
        double clsError = actualCls.sub(expectedTokens[.., 0]).abs().max().item<float>();
        Console.WriteLine($"{what}: max |C# - PyTorch| patch tokens {tokenError:E2}, cls {clsError:E2}");
        Assert.IsTrue(actualTokens.allclose(expectedTokens[.., 1..], rtol: tolerance, atol: tolerance), $"{what}: patch tokens differ from PyTorch by up to {tokenError}");
        Assert.IsTrue(actualCls.allclose(expectedTokens[.., 0], rtol: tolerance, atol: tolerance), $"{what}: cls token differs from PyTorch by up to {clsError}");
    }

    [TestMethod]
    public void PthWrittenByPyBridgeImportsFlatOrNestedAndBrokenFilesAreRefusedClearly()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 12);
        using var scope = NewDisposeScope();
        var weights = new System.Collections.Hashtable();
        foreach (var (key, value) in encoder.Module.state_dict())
        {
            weights[key] = value.cpu();
        }

        // A flat state_dict, and the official checkpoints' layout (the weights under 'model'), both written by PyBridge's
        // public pickler, read back through its public unpickler.
        var flat = TempFile("flat.pth");
        using (var stream = File.Create(flat))
        {
            TorchSharp.PyBridge.PyTorchPickler.PickleStateDict(stream, weights, leaveOpen: false);
        }

        var nested = TempFile("nested.pth");
        using (var stream = File.Create(nested))
        {
            TorchSharp.PyBridge.PyTorchPickler.PickleStateDict(stream, new System.Collections.Hashtable { ["model"] = weights }, leaveOpen: false);
        }

        var pixels = RandomPixels(2, Tiny, 6);
        foreach (var path in new[] { flat, nested })
        {
            using var imported = BootMaeEncoder.FromPyTorch(path, Tiny);
            CollectionAssert.AreEqual(encoder.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.Float32), imported.Embed(pixels, 2, BootMaePooling.Mean, 1, BootMaePrecision.Float32));
        }

        var broken = TempFile("broken.pth");
        File.WriteAllText(broken, "not a zip file");
        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(broken, Tiny));
        StringAssert.Contains(error.Message, "could not be read as a torch.save file");
        foreach (var path in new[] { flat, nested, broken })
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void WrongArchitectureOnImportNamesTheProblem()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "TestData", "interop", "mae_style_encoder.safetensors");

        var error = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(path, Tiny with { EmbedDim = 64 }));

        StringAssert.Contains(error.Message, "shape");
        StringAssert.Contains(error.Message, "EmbedDim");
    }

    [TestMethod]
    public void CloneIsIndependent()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 9);
        var pixels = RandomPixels(1, Tiny, 5);
        var before = encoder.Embed(pixels, 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32);

        using var clone = encoder.Clone();
        using (no_grad())
        {
            foreach (var p in clone.Module.parameters())
            {
                p.add_(1.0f);
            }
        }

        CollectionAssert.AreEqual(before, encoder.Embed(pixels, 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32));
        CollectionAssert.AreNotEqual(before, clone.Embed(pixels, 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32));
    }
}
