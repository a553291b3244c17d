using System.Collections.Immutable;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Issue 10, item 1, kept fixed: the library's IL must never convert a number (or array) into a TorchSharp
/// <c>Scalar</c>/<c>Tensor</c> implicitly, nor call a TorchSharp convenience overload that does so inside
/// (<c>a + b</c>, <c>x + 1e-5</c>, <c>add_(t)</c>, <c>square()</c> …): those native objects are freed by the finalizer,
/// possibly mid-call. Reads the compiled IL, so it sees every call site, lambdas included, and names file and line.
/// </summary>
[TestClass]
public sealed class ImplicitScalarGuardTests
{
    // TorchSharp methods that convert implicitly only where it cannot bite: eq(null) returns tensor(false); a
    // BatchNorm's constructor (module construction, not a step) sets up its buffers.
    private static readonly string[] Allowed =
    {
        "TorchSharp.torch+Tensor::eq(Tensor)",
        "TorchSharp.torch+nn::BatchNorm1d(",
    };

    [TestMethod]
    public void LibraryNeverConvertsImplicitly()
    {
        var torchSharp = new IlIndex(typeof(Tensor).Assembly.Location);
        var converting = torchSharp.MethodsThatConvertImplicitly();
        var library = new IlIndex(typeof(BootMaeEncoder).Assembly.Location);
        var sites = library.CallSites()
            .Where(c => c.Callee.StartsWith("TorchSharp", StringComparison.Ordinal))
            .Where(c => IsImplicitConversion(c.Callee) || converting.Contains(c.Callee))
            .Where(c => !Allowed.Any(a => c.Callee.StartsWith(a, StringComparison.Ordinal)))
            .Select(c => $"{c.Location}: {c.Callee}")
            .Distinct()
            .ToList();

        Assert.IsEmpty(sites, "Implicit TorchSharp conversions (use TorchScalars or `using var s = v.ToScalar()`):\n" + string.Join("\n", sites));
    }

    [TestMethod]
    public void GuardSeesAnImplicitConversion()
    {
        // The guard itself must be able to fail: this test assembly converts implicitly right here.
        using var scope = NewDisposeScope();
        _ = ones(1) * 2.0;
        var sites = new IlIndex(typeof(ImplicitScalarGuardTests).Assembly.Location).CallSites()
            .Where(c => c.Method.Contains("::" + nameof(GuardSeesAnImplicitConversion) + "(", StringComparison.Ordinal));
        Assert.IsTrue(sites.Any(c => c.Callee.StartsWith("TorchSharp.torch+Tensor::op_Multiply(Tensor,Double)", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void LibraryCallsNoTorchSharpOptimizer()
    {
        var sites = OptimizerCalls(typeof(BootMaeEncoder).Assembly.Location);
        Assert.IsEmpty(sites, "TorchSharp optimizer calls (use Training/OwnedAdamW):\n" + string.Join("\n", sites));
    }

    [TestMethod]
    public void OptimizerGuardSeesTorchSharpsAdamW()
    {
        // OwnedAdamWTests drives TorchSharp's AdamW as its reference, so this test assembly must be caught.
        Assert.IsTrue(OptimizerCalls(typeof(ImplicitScalarGuardTests).Assembly.Location).Any(s => s.Contains("AdamW", StringComparison.Ordinal)));
    }

    // TorchSharp's optimizers step behind a virtual call (the library's IL names the abstract Optimizer.step, which has no
    // body to follow), so the search above misses the implicit Scalars of AdamW.step: no TorchSharp optimizer type is
    // used at all, not even its param groups (whose options feed that step).
    private static List<string> OptimizerCalls(string assembly)
    {
        Type[] roots = { typeof(optim.Optimizer), typeof(TorchSharp.Modules.OptimizerOptions), typeof(TorchSharp.Modules.OptimizerState), typeof(TorchSharp.Modules.ParamGroup) };
        var optimizerTypes = typeof(Tensor).Assembly.GetTypes()
            .Where(t => t.FullName!.StartsWith("TorchSharp.torch+optim", StringComparison.Ordinal) || roots.Any(r => r.IsAssignableFrom(t)))
            .Select(t => t.FullName!)
            .ToHashSet();
        return new IlIndex(assembly).CallSites()
            .Where(c => optimizerTypes.Contains(c.Callee[..c.Callee.IndexOf("::", StringComparison.Ordinal)]))
            .Select(c => $"{c.Location}: {c.Callee}")
            .Distinct()
            .ToList();
    }

    // Only these two own a native handle (a TensorIndex from x[.., 1..] is a managed object).
    private static bool IsImplicitConversion(string callee)
        => callee.StartsWith("TorchSharp.Scalar::op_Implicit(", StringComparison.Ordinal) || callee.StartsWith("TorchSharp.torch+Tensor::op_Implicit(", StringComparison.Ordinal);

    private sealed record CallSite(string Method, string Callee, string Location);

    /// <summary>The calls of every method body of one assembly, with signatures as text.</summary>
    private sealed class IlIndex
    {
        private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes).GetFields()
            .Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value);

        private readonly string _path;

        public IlIndex(string path) => _path = path;

        public HashSet<string> MethodsThatConvertImplicitly()
        {
            var calls = new Dictionary<string, List<string>>();
            foreach (var site in CallSites())
            {
                if (!calls.TryGetValue(site.Method, out var list))
                {
                    calls[site.Method] = list = new List<string>();
                }

                list.Add(site.Callee);
            }

            // Direct conversions, then whatever calls them (TorchSharp's overloads forward to one another).
            var converting = calls.Where(kv => kv.Value.Any(IsImplicitConversion)).Select(kv => kv.Key).ToHashSet();
            for (bool changed = true; changed;)
            {
                changed = false;
                foreach (var (method, callees) in calls)
                {
                    if (!converting.Contains(method) && callees.Any(converting.Contains))
                    {
                        changed |= converting.Add(method);
                    }
                }
            }

            return converting;
        }

        public List<CallSite> CallSites()
        {
            using var pe = new PEReader(File.OpenRead(_path));
            var md = pe.GetMetadataReader();
            var pdbPath = Path.ChangeExtension(_path, ".pdb");
            using var pdbProvider = File.Exists(pdbPath) ? MetadataReaderProvider.FromPortablePdbStream(File.OpenRead(pdbPath)) : null;
            var pdb = pdbProvider?.GetMetadataReader();
            var result = new List<CallSite>();
            foreach (var handle in md.MethodDefinitions)
            {
                var method = md.GetMethodDefinition(handle);
                if (method.RelativeVirtualAddress == 0)
                {
                    continue;
                }

                string caller = Describe(md, method.GetDeclaringType(), md.GetString(method.Name), method.Signature);
                var il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILReader();
                while (il.RemainingBytes > 0)
                {
                    int offset = il.Offset;
                    short value = il.ReadByte();
                    if (value == 0xFE)
                    {
                        value = unchecked((short)(0xFE00 | il.ReadByte()));
                    }

                    var op = OpCodesByValue[value];
                    if (op.OperandType == OperandType.InlineMethod)
                    {
                        var callee = Callee(md, MetadataTokens.EntityHandle(il.ReadInt32()));
                        if (callee is not null)
                        {
                            result.Add(new CallSite(caller, callee, Locate(pdb, handle, offset) ?? caller));
                        }

                        continue;
                    }

                    Skip(ref il, op.OperandType);
                }
            }

            return result;
        }

        private static void Skip(ref BlobReader il, OperandType operand)
        {
            switch (operand)
            {
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar:
                    il.ReadByte();
                    break;
                case OperandType.InlineVar:
                    il.ReadInt16();
                    break;
                case OperandType.InlineI8 or OperandType.InlineR:
                    il.ReadInt64();
                    break;
                case OperandType.InlineSwitch:
                    int n = il.ReadInt32();
                    il.Offset += 4 * n;
                    break;
                default:
                    il.ReadInt32();
                    break;
            }
        }

        private static string? Callee(MetadataReader md, EntityHandle token)
        {
            if (token.Kind == HandleKind.MethodSpecification)
            {
                token = md.GetMethodSpecification((MethodSpecificationHandle)token).Method;
            }

            switch (token.Kind)
            {
                case HandleKind.MethodDefinition:
                    var definition = md.GetMethodDefinition((MethodDefinitionHandle)token);
                    return Describe(md, definition.GetDeclaringType(), md.GetString(definition.Name), definition.Signature);
                case HandleKind.MemberReference:
                    var reference = md.GetMemberReference((MemberReferenceHandle)token);
                    return reference.GetKind() == MemberReferenceKind.Method ? Describe(md, reference.Parent, md.GetString(reference.Name), reference.Signature) : null;
                default:
                    return null;
            }
        }

        // "Namespace.Outer+Inner::name(P1,P2)", the same text for a definition and a reference to it.
        private static string Describe(MetadataReader md, EntityHandle type, string name, BlobHandle signature)
        {
            var reader = md.GetBlobReader(signature);
            var decoded = new SignatureDecoder<string, object?>(TypeNames.Instance, md, null).DecodeMethodSignature(ref reader);
            return $"{TypeName(md, type)}::{name}({string.Join(",", decoded.ParameterTypes)})";
        }

        private static string TypeName(MetadataReader md, EntityHandle handle) => handle.Kind switch
        {
            HandleKind.TypeReference when md.GetTypeReference((TypeReferenceHandle)handle) is var r =>
                (r.ResolutionScope.Kind == HandleKind.TypeReference ? TypeName(md, (EntityHandle)r.ResolutionScope) + "+" : md.GetString(r.Namespace) + ".") + md.GetString(r.Name),
            HandleKind.TypeDefinition when md.GetTypeDefinition((TypeDefinitionHandle)handle) is var d =>
                (d.GetDeclaringType().IsNil ? md.GetString(d.Namespace) + "." : TypeName(md, d.GetDeclaringType()) + "+") + md.GetString(d.Name),
            _ => "?",
        };

        private static string? Locate(MetadataReader? pdb, MethodDefinitionHandle method, int offset)
        {
            if (pdb is null)
            {
                return null;
            }

            SequencePoint? last = null;
            foreach (var point in pdb.GetMethodDebugInformation(method.ToDebugInformationHandle()).GetSequencePoints())
            {
                if (!point.IsHidden && point.Offset <= offset)
                {
                    last = point;
                }
            }

            return last is { } p ? $"{Path.GetFileName(pdb.GetString(pdb.GetDocument(p.Document).Name))}:{p.StartLine}" : null;
        }
    }

    private sealed class TypeNames : ISignatureTypeProvider<string, object?>
    {
        public static readonly TypeNames Instance = new();

        public string GetArrayType(string elementType, ArrayShape shape) => elementType + "[,]";

        public string GetByReferenceType(string elementType) => elementType + "&";

        public string GetFunctionPointerType(MethodSignature<string> signature) => "fnptr";

        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) => $"{genericType}<{string.Join(",", typeArguments)}>";

        public string GetGenericMethodParameter(object? genericContext, int index) => "!!" + index;

        public string GetGenericTypeParameter(object? genericContext, int index) => "!" + index;

        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;

        public string GetPinnedType(string elementType) => elementType;

        public string GetPointerType(string elementType) => elementType + "*";

        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => typeCode.ToString();

        public string GetSZArrayType(string elementType) => elementType + "[]";

        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => reader.GetString(reader.GetTypeDefinition(handle).Name);

        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => reader.GetString(reader.GetTypeReference(handle).Name);

        public string GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) => "spec";
    }
}
