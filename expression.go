package caddyoidc

import (
	"fmt"

	"cel.dev/cel-go/cel"
)

// claimExpression is a compiled allow_expression: CEL over `claims`.
type claimExpression struct{ prg cel.Program }

func compileClaimExpression(src string) (*claimExpression, error) {
	env, err := cel.NewEnv(cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)))
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return nil, fmt.Errorf("the expression gives %s, want a bool", ast.OutputType())
	}
	// Bounded: an expression cannot run away on large claims.
	prg, err := env.Program(ast, cel.CostLimit(100_000))
	if err != nil {
		return nil, err
	}
	return &claimExpression{prg: prg}, nil
}

// allows evaluates the expression; an error (a missing claim) is a no.
func (e *claimExpression) allows(claims map[string]any) bool {
	out, _, err := e.prg.Eval(map[string]any{"claims": claims})
	if err != nil {
		return false
	}
	b, ok := out.Value().(bool)
	return ok && b
}
